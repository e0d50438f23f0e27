"""PolicyEngine: collects every violation; a raising check is a violation."""

from __future__ import annotations

import pytest

from carcore import StateStore
from carmulti import Action, PolicyEngine, PolicyViolation


def test_all_violations_collected_in_registration_order():
    pe = PolicyEngine()
    pe.register("p1", lambda a, s: "first reason")
    pe.register("allow", lambda a, s: None, "always allows")
    pe.register("p2", lambda a, s: f"second for {a.id}")
    v = pe.check(Action("act-1", tool="t"), StateStore())
    assert v == [PolicyViolation("p1", "act-1", "first reason"), PolicyViolation("p2", "act-1", "second for act-1")]
    assert v[0].to_dict() == {"policy_name": "p1", "action_id": "act-1", "reason": "first reason"}


def test_raising_check_is_a_violation():
    pe = PolicyEngine()

    def broken(action, state):
        raise KeyError("oops")

    pe.register("broken", broken)
    pe.register("ok", lambda a, s: None)
    (v,) = pe.check(Action("a"), StateStore())
    assert v.policy_name == "broken" and v.action_id == "a"
    assert "KeyError" in v.reason and "oops" in v.reason


def test_allowed_action_has_no_violations():
    pe = PolicyEngine()
    assert pe.is_empty() and len(pe) == 0
    assert pe.check(Action("a"), StateStore()) == []
    pe.register("ok", lambda a, s: None)
    assert pe.check(Action("a"), StateStore()) == []


def test_check_sees_state():
    pe = PolicyEngine()
    pe.register("locked", lambda a, s: "locked" if s.get("lock") else None)
    st = StateStore()
    assert pe.check(Action("a"), st) == []
    st.set("lock", True)
    assert [v.reason for v in pe.check(Action("a"), st)] == ["locked"]


def test_register_replace_unregister_names():
    pe = PolicyEngine()
    pe.register("a", lambda a, s: "A", "desc a")
    pe.register("b", lambda a, s: "B")
    pe.register("a", lambda a, s: "A2", "desc a2")
    assert pe.policy_names() == ["a", "b"]
    assert pe.describe("a") == "desc a2"
    assert [v.reason for v in pe.check(Action("x"), StateStore())] == ["A2", "B"]
    assert pe.unregister("a") == 1 and pe.unregister("a") == 0
    assert pe.policy_names() == ["b"]


def test_register_rejects_non_callable():
    with pytest.raises(TypeError):
        PolicyEngine().register("x", "not callable")  # type: ignore[arg-type]
