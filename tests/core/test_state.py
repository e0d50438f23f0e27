"""Unit tests for carcore.state (StateStore, Overlay, StateTransition)."""

from __future__ import annotations

import datetime
import pickle

import pytest

from carcore import CarError, MergeConflictError, Overlay, StateStore, StateTransition


# ----------------------------------------------------------------------------- StateStore


def test_set_get_roundtrip_and_types():
    s = StateStore()
    values = {"s": "x", "i": 3, "big": 2**63, "f": 1.5, "b": True, "n": None,
              "d": {"a": [1, 2, {"b": None}]}, "l": [1, "2"], "t": (1, 2)}
    for k, v in values.items():
        s.set(k, v)
    for k, v in values.items():
        expect = list(v) if isinstance(v, tuple) else v
        assert s.get(k) == expect
        assert type(s.get(k)) is type(expect)
    assert len(s) == len(values)
    assert s.keys() == list(values)


def test_get_default_and_missing():
    s = StateStore()
    sentinel = object()
    assert s.get("nope") is None
    assert s.get("nope", sentinel) is sentinel
    s.set("k", None)
    assert s.get("k", sentinel) is None
    assert s.exists("k") and "k" in s and not s.exists("nope") and "nope" not in s


def test_get_returns_a_copy():
    s = StateStore()
    v = {"a": [1]}
    s.set("k", v)
    v["a"].append(2)  # caller's object mutated after set
    got = s.get("k")
    assert got == {"a": [1]}
    got["a"].append(3)
    got["new"] = 1
    assert s.get("k") == {"a": [1]}
    snap = s.snapshot()
    snap["k"]["a"].clear()
    assert s.get("k") == {"a": [1]}


@pytest.mark.parametrize("key", [1, None, b"k", ("a",), 1.5])
def test_key_must_be_str(key):
    s = StateStore()
    with pytest.raises(TypeError, match=f"state key must be str, got {type(key).__name__}"):
        s.set(key, 1)
    with pytest.raises(TypeError, match="state key must be str"):
        s.get(key)
    with pytest.raises(TypeError, match="state key must be str"):
        s.delete(key)
    with pytest.raises(TypeError, match="state key must be str"):
        _ = key in s
    assert len(s) == 0 and s.transition_count() == 0


@pytest.mark.parametrize(
    "value",
    [object(), {1: "int key"}, b"bytes", {"a": {1, 2}}, float("nan"), float("inf"),
     2**64, [2**70], datetime.datetime.now(), {"x": object()}],
)
def test_value_must_be_json_serializable(value):
    s = StateStore()
    s.set("k", "old")
    with pytest.raises(TypeError, match=r"state value for key 'k' is not JSON-serializable: "):
        s.set("k", value)
    assert s.get("k") == "old"
    assert s.transition_count() == 1


def test_str_subclass_key_and_value_normalized():
    class S(str):
        pass

    s = StateStore()
    s.set(S("k"), S("v"))
    assert type(s.keys()[0]) is str
    assert s.get("k") == "v" and type(s.get("k")) is str


def test_transitions_recorded_per_set_and_delete():
    s = StateStore()
    t1 = s.set("a", 1, writer="w1")
    t2 = s.set("a", {"x": 2}, writer="w2")
    t3 = s.delete("a", writer="w3")
    assert s.delete("a") is None  # absent: nothing recorded
    assert s.transition_count() == 3
    assert s.transitions() == [t1, t2, t3]
    assert s.transitions(2) == [t3]
    assert s.transitions(5) == []
    assert (t1.key, t1.old_value, t1.new_value, t1.writer) == ("a", None, 1, "w1")
    assert (t2.old_value, t2.new_value, t2.action_id) == (1, {"x": 2}, "w2")
    assert (t3.old_value, t3.new_value) == ({"x": 2}, None)
    assert t3.is_delete and t3.was_present and not t1.was_present
    with pytest.raises(ValueError, match="since must be >= 0"):
        s.transitions(-1)


def test_transition_attrs_are_copies_and_readonly():
    s = StateStore()
    t = s.set("a", {"x": [1]})
    t.new_value["x"].append(2)
    assert t.new_value == {"x": [1]}
    with pytest.raises(AttributeError):
        t.key = "b"
    with pytest.raises(TypeError):
        StateTransition()


def test_transition_timestamp_to_dict_repr_pickle():
    s = StateStore()
    before = datetime.datetime.now(datetime.timezone.utc)
    t = s.set("a", [1], writer="act-1")
    after = datetime.datetime.now(datetime.timezone.utc)
    assert t.timestamp.tzinfo is not None
    assert t.timestamp.utcoffset() == datetime.timedelta(0)
    assert before - datetime.timedelta(seconds=1) <= t.timestamp <= after + datetime.timedelta(seconds=1)
    d = t.to_dict()
    assert d["key"] == "a" and d["new_value"] == [1] and d["old_value"] is None
    assert d["writer"] == d["action_id"] == "act-1"
    assert datetime.datetime.fromisoformat(d["timestamp"]) == t.timestamp
    assert "StateTransition(key='a'" in repr(t)
    assert pickle.loads(pickle.dumps(t)) == t


def test_writer_validation():
    s = StateStore()
    assert s.set("a", 1, writer=None).writer == ""
    with pytest.raises(TypeError, match="writer must be str"):
        s.set("a", 1, writer=3)


def test_apply_all_or_nothing():
    s = StateStore()
    s.set("a", 1)
    s.set("b", 2)
    ts = s.apply({"a": 10, "c": [3]}, ["b", "zzz"], writer="ov")
    assert [(t.key, t.new_value) for t in ts] == [("a", 10), ("c", [3]), ("b", None)]
    assert all(t.writer == "ov" for t in ts)
    assert s.snapshot() == {"a": 10, "c": [3]}
    n = s.transition_count()
    with pytest.raises(TypeError, match="key 'bad'"):
        s.apply({"x": 1, "bad": object()}, ["a"])
    with pytest.raises(TypeError, match="state key must be str"):
        s.apply({"x": 1}, [1])
    with pytest.raises(TypeError, match="sets must be a mapping"):
        s.apply([("x", 1)])
    assert s.snapshot() == {"a": 10, "c": [3]} and s.transition_count() == n


def test_set_many_is_set_of_each_in_turn_with_one_timestamp():
    s = StateStore()
    s.set("a", 1)
    ts = s.set_many(["b", "a", "b"], ["x", {"k": [1]}, None], ["w1", None, "w3"])
    assert [(t.key, t.old_value, t.new_value, t.writer) for t in ts] == [
        ("b", None, "x", "w1"), ("a", 1, {"k": [1]}, ""), ("b", "x", None, "w3")]
    assert len({t.ts_ns for t in ts}) == 1
    assert s.snapshot() == {"a": {"k": [1]}, "b": None} and s.keys() == ["a", "b"]
    assert s.transitions(1) == ts
    assert s.set_many((), [], iter(())) == []  # any sequences; nothing to do
    ov = s.overlay("o")
    ov.set_many(("c",), ("y",), ("w",))
    assert ov.snapshot() == {"a": {"k": [1]}, "b": None, "c": "y"} and "c" not in s


def test_set_many_validates_everything_first():
    s = StateStore()
    s.set("a", 1)
    n = s.transition_count()
    with pytest.raises(TypeError, match="state value for key 'bad' is not JSON-serializable"):
        s.set_many(["x", "bad"], [1, object()], ["w", "w"])
    with pytest.raises(TypeError, match="state key must be str"):
        s.set_many(["x", 2], [1, 2], ["w", "w"])
    with pytest.raises(TypeError, match="writer must be str"):
        s.set_many(["x", "y"], [1, 2], ["w", 3])
    with pytest.raises(ValueError, match="got 2 keys, 1 values, 2 writers"):
        s.set_many(["x", "y"], [1], ["w", "w"])
    assert s.snapshot() == {"a": 1} and s.transition_count() == n


def test_transitions_are_not_tracked_by_the_cyclic_collector():
    """They hold only immutable scalars and bytes (no cycle is possible): a big log costs full
    collections nothing."""
    import gc

    s = StateStore()
    t = s.set("a", {"deep": [1, 2]}, "w")
    assert not gc.is_tracked(t)
    assert t.new_value == {"deep": [1, 2]} and pickle.loads(pickle.dumps(t)) == t


def test_restore_truncates_log():
    s = StateStore()
    s.set("a", 1)
    snap, count = s.snapshot(), s.transition_count()
    s.set("b", 2)
    s.delete("a")
    s.restore(snap, count)
    assert s.snapshot() == {"a": 1}
    assert s.transition_count() == 1
    with pytest.raises(ValueError, match="between 0 and the current count 1, got 2"):
        s.restore({}, 2)
    with pytest.raises(ValueError, match="got -1"):
        s.restore({}, -1)
    with pytest.raises(TypeError, match="key 'x'"):
        s.restore({"x": object()}, 0)
    assert s.snapshot() == {"a": 1} and s.transition_count() == 1


def test_replace_all_clears_log():
    s = StateStore()
    s.set("a", 1)
    s.replace_all({"z": {"q": 1}})
    assert s.snapshot() == {"z": {"q": 1}}
    assert s.transition_count() == 0 and s.transitions() == []
    with pytest.raises(TypeError, match="key 'y'"):
        s.replace_all({"y": {1, 2}})
    assert s.snapshot() == {"z": {"q": 1}}


def test_repr_and_iter():
    s = StateStore()
    s.set("a", 1)
    assert list(s) == ["a"]
    assert "StateStore" in repr(s)


# ----------------------------------------------------------------------------- Overlay


def test_overlay_fall_through_and_isolation():
    s = StateStore()
    s.set("a", 1)
    s.set("b", {"x": 1})
    o = s.overlay("o1")
    assert isinstance(o, Overlay) and o.name == "o1" and o.parent is s
    assert o.get("a") == 1 and "b" in o and len(o) == 2
    t = o.set("a", 2, writer="act")
    assert (t.old_value, t.new_value, t.writer) == (1, 2, "act")
    o.set("c", [1])
    assert o.get("a") == 2 and s.get("a") == 1
    assert "c" not in s and o.keys() == ["a", "b", "c"]
    sib = s.overlay("o2")
    assert sib.get("a") == 1 and "c" not in sib
    assert o.snapshot() == {"a": 2, "b": {"x": 1}, "c": [1]}
    assert s.snapshot() == {"a": 1, "b": {"x": 1}}
    # parent changes to untouched keys are visible
    s.set("d", 4)
    assert o.get("d") == 4


def test_overlay_tombstones():
    s = StateStore()
    s.set("a", 1)
    s.set("b", 2)
    o = s.overlay("o")
    t = o.delete("a")
    assert t.old_value == 1 and t.new_value is None
    assert o.get("a") is None and "a" not in o and o.keys() == ["b"] and len(o) == 1
    assert s.get("a") == 1
    assert o.delete("a") is None and o.delete("zz") is None
    assert len(o.transitions()) == 1
    o.set("a", 5)
    assert o.get("a") == 5 and o.changes() == ({"a": 5}, [])
    o.delete("a")
    assert o.changes() == ({}, ["a"])


def test_overlay_changes_has_changes_discard():
    s = StateStore()
    s.set("a", 1)
    before = s.snapshot(), s.transition_count()
    o = s.overlay("o")
    assert not o.has_changes
    o.set("x", {"v": 1})
    o.delete("a")
    sets, dels = o.changes()
    assert sets == {"x": {"v": 1}} and dels == ["a"]
    sets["x"]["v"] = 99
    assert o.get("x") == {"v": 1}
    assert o.has_changes
    o.discard()
    assert not o.has_changes and o.transitions() == []
    assert o.snapshot() == {"a": 1}
    assert (s.snapshot(), s.transition_count()) == before


def test_overlay_validation_and_get_copy():
    s = StateStore()
    o = s.overlay("o")
    with pytest.raises(TypeError, match="state value for key 'k' is not JSON-serializable"):
        o.set("k", object())
    with pytest.raises(TypeError, match="state key must be str, got int"):
        o.set(1, 1)
    o.set("k", {"a": [1]})
    o.get("k")["a"].append(2)
    assert o.get("k") == {"a": [1]}
    assert not o.has_changes or o.changes() == ({"k": {"a": [1]}}, [])
    with pytest.raises(TypeError, match="overlay name must be str"):
        s.overlay(3)
    with pytest.raises(TypeError, match="overlay parent must be"):
        Overlay({}, "x")


def test_merge_lww_atomic_and_idempotent():
    s = StateStore()
    s.set("a", 1)
    s.set("b", 2)
    o = s.overlay("agent-1")
    o.set("a", 10)
    o.delete("b")
    o.set("c", 3)
    n = s.transition_count()
    out = o.merge_to_parent()
    assert [(t.key, t.new_value) for t in out] == [("a", 10), ("c", 3), ("b", None)]
    assert all(t.writer == "agent-1" for t in out)
    assert s.snapshot() == {"a": 10, "c": 3}
    assert s.transition_count() == n + 3
    assert not o.has_changes
    assert o.merge_to_parent() == [] and s.transition_count() == n + 3
    assert o.snapshot() == s.snapshot()


def test_merge_lww_overwrites_concurrent_change():
    s = StateStore()
    s.set("a", 1)
    o = s.overlay("o")
    o.set("a", 2)
    s.set("a", 3)
    o.merge_to_parent("last_writer_wins")
    assert s.get("a") == 2


def test_merge_unknown_policy():
    o = StateStore().overlay("o")
    with pytest.raises(ValueError, match="unknown merge policy 'x'.*'first_committer_wins', 'last_writer_wins'"):
        o.merge_to_parent("x")


def test_fcw_conflict_applies_nothing():
    s = StateStore()
    s.set("x", 1)
    s.set("y", 1)
    s.set("z", 1)
    o = s.overlay("a1")
    assert o.get("x") == 1           # read
    o.set("y", 2)                    # write
    o.set("w", 5)                    # write of a new key
    o.get("z")
    s.set("x", 100)
    s.set("y", 100)
    s.delete("z")
    before = s.snapshot(), s.transition_count()
    with pytest.raises(MergeConflictError) as ei:
        o.merge_to_parent("first_committer_wins")
    err = ei.value
    assert isinstance(err, CarError)
    assert err.keys == ["x", "y", "z"] and err.overlay == "a1"
    assert str(err).startswith(
        "merge conflict in overlay 'a1': key(s) 'x', 'y', 'z' changed in the parent after the "
        "overlay read or wrote them; nothing was applied."
    )
    assert "policy='last_writer_wins'" in str(err)
    assert (s.snapshot(), s.transition_count()) == before
    assert o.changes() == ({"y": 2, "w": 5}, [])
    # lww still possible
    o.merge_to_parent("last_writer_wins")
    assert s.get("y") == 2 and s.get("w") == 5


def test_fcw_no_conflict_on_untouched_or_disjoint_keys():
    s = StateStore()
    s.set("a", 1)
    o1, o2 = s.overlay("o1"), s.overlay("o2")
    o1.set("x", 1)
    o2.set("y", 2)
    s.set("a", 2)  # nobody touched "a"
    o2.merge_to_parent("first_committer_wins")
    o1.merge_to_parent("first_committer_wins")
    assert s.snapshot() == {"a": 2, "x": 1, "y": 2}


def test_fcw_two_overlays_same_key_second_conflicts():
    s = StateStore()
    o1, o2 = s.overlay("o1"), s.overlay("o2")
    o1.set("k", "one")
    o2.set("k", "two")
    o1.merge_to_parent("first_committer_wins")
    with pytest.raises(MergeConflictError, match="'k'"):
        o2.merge_to_parent("first_committer_wins")
    assert s.get("k") == "one"


def test_fcw_delete_vs_write_conflict_and_set_same_value_counts():
    s = StateStore()
    s.set("k", 1)
    o = s.overlay("o")
    o.delete("k")
    s.set("k", 1)  # same value, but a new version
    with pytest.raises(MergeConflictError):
        o.merge_to_parent("first_committer_wins")


def test_fcw_rebaseline_after_merge():
    s = StateStore()
    o = s.overlay("o")
    o.set("k", 1)
    o.merge_to_parent("first_committer_wins")
    o.set("k", 2)
    o.merge_to_parent("first_committer_wins")
    assert s.get("k") == 2


def test_exists_counts_as_read():
    s = StateStore()
    o = s.overlay("o")
    assert not o.exists("k")
    o.set("other", 1)
    s.set("k", 1)
    with pytest.raises(MergeConflictError) as ei:
        o.merge_to_parent("first_committer_wins")
    assert ei.value.keys == ["k"]


def test_keys_and_snapshot_do_not_count_as_reads():
    s = StateStore()
    s.set("k", 1)
    o = s.overlay("o")
    o.keys(), o.snapshot(), len(o)
    o.set("other", 1)
    s.set("k", 2)
    o.merge_to_parent("first_committer_wins")


def test_nested_overlay_merge_chain():
    s = StateStore()
    s.set("a", 1)
    mid = s.overlay("mid")
    leaf = mid.overlay("leaf")
    assert leaf.parent is mid and leaf.get("a") == 1
    leaf.set("b", 2)
    leaf.delete("a")
    assert mid.get("b") is None and mid.get("a") == 1
    out = leaf.merge_to_parent("first_committer_wins")
    assert [t.writer for t in out] == ["leaf", "leaf"]
    assert mid.snapshot() == {"b": 2} and s.snapshot() == {"a": 1}
    mid.merge_to_parent("first_committer_wins")
    assert s.snapshot() == {"b": 2}
    assert [t.writer for t in s.transitions()[-2:]] == ["mid", "mid"]


def test_nested_conflict_detected_at_each_level():
    s = StateStore()
    s.set("a", 1)
    mid = s.overlay("mid")
    leaf = mid.overlay("leaf")
    leaf.get("a")
    mid.set("a", 2)  # parent of leaf changed "a" after leaf read it
    leaf.set("b", 1)
    with pytest.raises(MergeConflictError) as ei:
        leaf.merge_to_parent("first_committer_wins")
    assert ei.value.overlay == "leaf" and ei.value.keys == ["a"]
    leaf.discard()
    # a read deep in the chain is checked again when mid merges into the store
    leaf2 = mid.overlay("leaf2")
    leaf2.get("c")
    leaf2.set("d", 1)
    leaf2.merge_to_parent("first_committer_wins")
    s.set("c", "changed")
    with pytest.raises(MergeConflictError) as ei:
        mid.merge_to_parent("first_committer_wins")
    assert ei.value.overlay == "mid" and ei.value.keys == ["c"]


def test_nested_no_spurious_conflict_after_parent_merge():
    s = StateStore()
    mid = s.overlay("mid")
    mid.set("k", 1)
    leaf = mid.overlay("leaf")
    assert leaf.get("k") == 1
    mid.merge_to_parent()  # visible value of k in mid unchanged
    leaf.set("z", 1)
    leaf.merge_to_parent("first_committer_wins")
    # but a later real change of k in the store is a conflict for a fresh reader's view
    leaf2 = mid.overlay("leaf2")
    leaf2.get("k")
    s.set("k", 5)
    leaf2.set("q", 1)
    with pytest.raises(MergeConflictError):
        leaf2.merge_to_parent("first_committer_wins")


def test_merge_conflict_error_pickles():
    e = MergeConflictError(["b", "a"], "ov")
    e2 = pickle.loads(pickle.dumps(e))
    assert e2.keys == ["a", "b"] and e2.overlay == "ov" and str(e2) == str(e)


def test_overlay_is_local_and_revert():
    s = StateStore()
    s.set("p", "parent")
    o = s.overlay("o")
    assert not o.is_local("p")
    o.set("p", "mine")
    o.set("n", 1)
    o.delete("x")  # absent: no tombstone recorded
    assert o.is_local("p") and o.is_local("n")
    t = o.revert("p", "undo")
    assert t.old_value == "mine" and t.new_value == "parent" and t.writer == "undo"
    assert o.get("p") == "parent" and not o.is_local("p")
    t2 = o.revert("n")
    assert t2.old_value == 1 and t2.new_value is None and not o.exists("n")
    assert o.revert("n") is None  # nothing local any more
    o.delete("p")
    assert o.is_local("p") and not o.exists("p")
    o.revert("p")
    assert o.get("p") == "parent"
    assert o.changes() == ({}, [])
    s.set("n", "other")
    o.merge_to_parent()
    assert s.get("n") == "other" and s.get("p") == "parent"
    with pytest.raises(TypeError):
        o.revert(1)
