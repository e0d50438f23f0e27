"""Unit and recovery tests for carcore.eventlog."""

from __future__ import annotations

import logging
import os
import pickle
import time
import zlib

import orjson
import pytest

from carcore import CarError, Event, EventLog, LogCorruptedError, RecoveryReport


def _lines(path) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


# ------------------------------------------------------------------------------ basics


def test_append_and_read_in_memory():
    log = EventLog()
    assert log.path is None and log.fsync == "batch" and not log.closed and log.recovery is None
    t0 = time.time_ns()
    e0 = log.append("start", {"a": [1]}, agent="ag1", action_id="act", proposal_id="p")
    e1 = log.append("step", 3, agent="ag2")
    e2 = log.append("stop")
    assert [e.seq for e in (e0, e1, e2)] == [0, 1, 2]
    assert t0 <= e0.ts_ns <= e1.ts_ns <= e2.ts_ns <= time.time_ns()
    assert (e0.kind, e0.agent, e0.action_id, e0.proposal_id, e0.data) == ("start", "ag1", "act", "p", {"a": [1]})
    assert e2.data is None and e2.agent is None
    assert len(log) == 3
    assert log.events() == [e0, e1, e2]
    assert log.events(1) == [e1, e2]
    assert log.events(3) == [] and log.events(10) == []
    assert list(log) == [e0, e1, e2]
    with pytest.raises(ValueError, match="since must be >= 0"):
        log.events(-1)


def test_filter():
    log = EventLog()
    log.append("a", agent="x")
    log.append("b", agent="x")
    log.append("a", agent="y")
    assert [e.seq for e in log.filter(kind="a")] == [0, 2]
    assert [e.seq for e in log.filter(agent="x")] == [0, 1]
    assert [e.seq for e in log.filter(kind="a", agent="y")] == [2]
    assert len(log.filter()) == 3
    assert log.filter(kind="zzz") == []


def test_event_data_is_a_copy():
    log = EventLog()
    payload = {"a": [1]}
    e = log.append("k", payload)
    payload["a"].append(2)
    d = e.data
    assert d == {"a": [1]}
    d["a"].append(3)
    assert e.data == {"a": [1]}
    assert log.events()[0].data == {"a": [1]}
    log.events()[0].data["a"].clear()
    assert log.events()[0].data == {"a": [1]}
    td = e.to_dict()
    td["data"]["a"].clear()
    assert e.data == {"a": [1]}


def test_event_readonly_repr_eq_pickle_to_dict():
    log = EventLog()
    e = log.append("k", {"x": 1}, agent="a")
    with pytest.raises(AttributeError):
        e.seq = 5
    assert repr(e).startswith("Event(seq=0, ts_ns=")
    assert "kind='k'" in repr(e) and "data={'x': 1}" in repr(e)
    assert pickle.loads(pickle.dumps(e)) == e
    assert e.to_dict() == {"seq": 0, "ts_ns": e.ts_ns, "kind": "k", "agent": "a",
                           "action_id": None, "proposal_id": None, "data": {"x": 1}}
    other = Event(0, e.ts_ns, "k", {"x": 1}, agent="a")
    assert other == e
    assert Event(0, e.ts_ns, "k", {"x": 2}, agent="a") != e
    assert e != "not an event"


def test_append_validation_nothing_appended():
    log = EventLog()
    log.append("ok")
    with pytest.raises(TypeError, match="event data for kind 'bad' is not JSON-serializable"):
        log.append("bad", {"x": object()})
    with pytest.raises(TypeError, match="event kind must be str, got int"):
        log.append(3)
    with pytest.raises(TypeError, match="agent must be str or None, got int"):
        log.append("k", agent=1)
    with pytest.raises(TypeError, match="proposal_id must be str or None"):
        log.append("k", proposal_id=b"x")
    assert len(log) == 1


def test_append_batch():
    log = EventLog()
    log.append("first")
    first = log.append_batch([
        {"kind": "a", "data": [1], "agent": "w1"},
        {"kind": "b", "ts_ns": 123, "action_id": "x", "proposal_id": "p"},
    ])
    assert first == 1 and len(log) == 3
    e1, e2 = log.events(1)
    assert (e1.kind, e1.data, e1.agent) == ("a", [1], "w1")
    assert (e2.kind, e2.ts_ns, e2.action_id, e2.proposal_id) == ("b", 123, "x", "p")
    assert log.append_batch([]) == 3


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        ([{"kind": "a"}, {"data": 1}], ValueError, "record 1 has no 'kind'"),
        ([{"kind": "a"}, {"kind": "b", "bogus": 1}], ValueError, r"unknown key\(s\) \['bogus'\]"),
        ([{"kind": "a"}, {"kind": "b", "data": {1, 2}}], TypeError, "kind 'b' is not JSON-serializable"),
        ([{"kind": "a"}, "nope"], TypeError, "record 1 must be a dict"),
        ([{"kind": "a", "ts_ns": 1.5}], TypeError, "ts_ns must be int"),
        ([{"kind": 1}], TypeError, "event kind must be str"),
    ],
)
def test_append_batch_all_or_nothing(tmp_path, bad, exc, msg):
    path = tmp_path / "j.log"
    with EventLog(path) as log:
        log.append("x")
        size = os.path.getsize(path)
        with pytest.raises(exc, match=msg):
            log.append_batch(bad)
        assert len(log) == 1
        assert os.path.getsize(path) == size


def test_fsync_policy_validation(tmp_path):
    for pol in ("always", "batch", "never"):
        with EventLog(tmp_path / f"{pol}.log", fsync=pol) as log:
            assert log.fsync == pol
            log.append("k", 1)
            log.flush()
        assert len(EventLog.open(tmp_path / f"{pol}.log")) == 1
    with pytest.raises(ValueError, match="fsync must be one of 'always', 'batch', 'never', got 'sometimes'"):
        EventLog(fsync="sometimes")
    with pytest.raises(ValueError, match="batch_records must be >= 1"):
        EventLog(batch_records=0)
    with pytest.raises(ValueError, match="batch_interval_s must be >= 0"):
        EventLog(batch_interval_s=-1)


def test_close_idempotent_and_append_after_close(tmp_path):
    log = EventLog(tmp_path / "j.log")
    log.append("k")
    log.close()
    log.close()
    assert log.closed
    with pytest.raises(ValueError, match="EventLog is closed"):
        log.append("k")
    with pytest.raises(ValueError, match="EventLog is closed"):
        log.append_batch([{"kind": "k"}])
    with pytest.raises(ValueError, match="EventLog is closed"):
        log.flush()
    assert len(log) == 1 and log.events()[0].kind == "k"  # still readable
    with EventLog() as mem:
        mem.append("x")
    assert mem.closed


def test_existing_nonempty_path_refused(tmp_path):
    path = tmp_path / "j.log"
    with EventLog(path) as log:
        log.append("k")
    with pytest.raises(FileExistsError, match=r"use EventLog.open\(.*\) to recover and continue it"):
        EventLog(path)
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    with EventLog(empty) as log:
        log.append("k")
    assert len(EventLog.open(empty)) == 1


def test_journal_format(tmp_path):
    path = tmp_path / "j.log"
    with EventLog(path, fsync="always") as log:
        log.append("k", {"a": 1}, agent="ag")
        log.append("k2")
        # written with write(2) before append returns: readable before close
        assert len(_lines(path)) == 2
    lines = _lines(path)
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line.endswith(b"\n")
        crc, _, js = line[:-1].partition(b" ")
        assert len(crc) == 8 and crc == crc.lower()
        assert int(crc, 16) == zlib.crc32(js)
        obj = orjson.loads(js)
        assert set(obj) == {"seq", "ts_ns", "kind", "agent", "action_id", "proposal_id", "data"}
        assert obj["seq"] == i
    assert orjson.loads(lines[0][9:])["data"] == {"a": 1}


def test_open_roundtrip_and_continue(tmp_path):
    path = tmp_path / "j.log"
    with EventLog(path) as log:
        orig = [log.append("k", {"i": i}, agent=f"a{i % 2}") for i in range(5)]
    log2 = EventLog.open(path, fsync="never")
    assert log2.recovery == RecoveryReport(5, 0, None)
    assert log2.events() == orig
    assert log2.fsync == "never"
    e = log2.append("more")
    assert e.seq == 5
    log2.close()
    log3 = EventLog.open(str(path))
    assert [x.seq for x in log3.events()] == list(range(6))
    log3.close()


def test_open_creates_missing_file(tmp_path):
    path = tmp_path / "new.log"
    with EventLog.open(path) as log:
        assert log.recovery == RecoveryReport(0, 0, None)
        log.append("k")
    assert os.path.exists(path) and len(EventLog.open(path)) == 1


def test_recovery_report_repr():
    r = RecoveryReport(3, 10, 99)
    assert repr(r) == "RecoveryReport(records=3, truncated_bytes=10, torn_offset=99)"
    assert pickle.loads(pickle.dumps(r)) == r


# ---------------------------------------------------------------------------- recovery


def _make_journal(path, n=6):
    with EventLog(path, fsync="never") as log:
        for i in range(n):
            log.append("k", {"i": i, "pad": "x" * (i * 3)}, agent="a")
        return log.events()


def test_truncate_at_every_byte_of_last_three_records(tmp_path, caplog):
    path = tmp_path / "orig.log"
    events = _make_journal(path, 6)
    data = path.read_bytes()
    lines = _lines(path)
    ends = []
    pos = 0
    for line in lines:
        pos += len(line)
        ends.append(pos)
    start = ends[-4]  # beginning of the third-to-last record
    caplog.set_level(logging.WARNING, logger="carcore.eventlog")
    for cut in range(start, len(data) + 1):
        p = tmp_path / "cut.log"
        p.write_bytes(data[:cut])
        good = sum(1 for e in ends if e <= cut)
        good_end = max([e for e in ends if e <= cut], default=0)
        caplog.clear()
        log = EventLog.open(p)
        try:
            assert len(log) == good, cut
            assert log.events() == events[:good]
            rep = log.recovery
            assert rep.records == good
            assert rep.truncated_bytes == cut - good_end
            if cut == good_end:
                assert rep.torn_offset is None and not caplog.records
            else:
                assert rep.torn_offset == good_end
                assert os.path.getsize(p) == good_end
                assert any("torn tail" in r.getMessage() for r in caplog.records)
            # appending continues densely after the repair
            assert log.append("after").seq == good
        finally:
            log.close()
        again = EventLog.open(p)
        assert len(again) == good + 1 and again.recovery.truncated_bytes == 0
        again.close()


@pytest.mark.parametrize("victim", [1, 2, 3])
def test_flipped_byte_in_middle_record_raises(tmp_path, victim):
    path = tmp_path / "j.log"
    _make_journal(path, 6)
    lines = _lines(path)
    offset = sum(len(x) for x in lines[:victim])
    for where in (0, 5, 9, len(lines[victim]) // 2, len(lines[victim]) - 2, len(lines[victim]) - 1):
        data = bytearray(b"".join(lines))
        data[offset + where] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(LogCorruptedError) as ei:
            EventLog.open(path)
        err = ei.value
        assert isinstance(err, CarError)
        assert err.offset == offset and err.path == str(path)
        assert str(path) in str(err) and f"byte offset {offset}" in str(err)
        assert f"records before offset {offset} are intact" in str(err)
        assert "truncate" in str(err)
        assert path.read_bytes() == bytes(data)  # nothing repaired silently
        # the records before the damage are intact
        prefix = tmp_path / "prefix.log"
        prefix.write_bytes(bytes(data[:offset]))
        with EventLog.open(prefix) as log:
            assert len(log) == victim and log.recovery.truncated_bytes == 0


def test_non_dense_seq_in_middle_is_corruption(tmp_path):
    path = tmp_path / "j.log"
    _make_journal(path, 4)
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    with pytest.raises(LogCorruptedError, match="sequence number 2 where 1 was expected") as ei:
        EventLog.open(path)
    assert ei.value.offset == len(lines[0])


def test_garbage_tail_is_torn(tmp_path):
    path = tmp_path / "j.log"
    _make_journal(path, 3)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\x00" * 100)
    with EventLog.open(path) as log:
        assert len(log) == 3
        assert log.recovery == RecoveryReport(3, 100, size)


def test_log_corrupted_error_pickles():
    e = LogCorruptedError("/x", 12, "bad")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.offset, e2.reason) == ("/x", 12, "bad") and str(e2) == str(e)


KILL_CHILD = r"""
import os, signal, sys
from carcore import EventLog
log = EventLog(sys.argv[1], fsync=sys.argv[2])
for i in range(2000):
    log.append("tick", {"i": i})
    sys.stdout.write(f"{i}\n")  # acknowledged: append returned
    sys.stdout.flush()
    if i == 1234:
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("policy", ["batch", "never", "always"])
def test_acknowledged_appends_survive_kill_9_and_the_writer_lock_is_released(tmp_path, policy):
    import subprocess
    import sys

    path = tmp_path / "j.log"
    proc = subprocess.run([sys.executable, "-c", KILL_CHILD, str(path), policy], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9
    acked = int(proc.stdout.split()[-1])
    assert acked == 1234
    log = EventLog.open(path)  # the dead writer's lock is gone
    try:
        assert len(log) >= acked + 1
        assert [e.data["i"] for e in log.events()] == list(range(len(log)))
    finally:
        log.close()


def _journal_lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_a_checksummed_record_out_of_sequence_at_the_tail_is_corruption_not_a_torn_write(tmp_path):
    path = tmp_path / "j.log"
    with EventLog(path) as log:
        for i in range(3):
            log.append("k", {"i": i})
    lines = _journal_lines(path)
    path.write_bytes(b"".join(lines) + lines[-1])  # the last record written twice
    with pytest.raises(LogCorruptedError) as ei:
        EventLog.open(path)
    assert ei.value.offset == sum(len(x) for x in lines)
    assert "sequence number 2 where 3 was expected" in str(ei.value)


def test_a_bad_complete_record_followed_by_a_torn_one_is_corruption(tmp_path):
    path = tmp_path / "j.log"
    with EventLog(path) as log:
        for i in range(3):
            log.append("k", {"i": i})
    lines = _journal_lines(path)
    broken = b"00000000" + lines[1][8:]
    path.write_bytes(lines[0] + broken + lines[2][:10])
    with pytest.raises(LogCorruptedError) as ei:
        EventLog.open(path)
    assert ei.value.offset == len(lines[0])


def test_two_writers_on_one_journal_are_refused(tmp_path):
    path = tmp_path / "j.log"
    first = EventLog(path)
    try:
        first.append("a")
        with pytest.raises(BlockingIOError, match="already open for writing by another EventLog"):
            EventLog.open(path)
    finally:
        first.close()
    again = EventLog.open(path)
    assert len(again) == 1
    again.close()


# ------------------------------------------------------------- issue 8 (trust first)


def test_journals_are_created_owner_only(tmp_path):
    """Finding 11b: a journal holds every agent's event data; it is created 0600, not 0644."""
    old = os.umask(0o022)
    try:
        with EventLog(tmp_path / "new.log") as log:
            log.append("k", {"secret": "x"})
        with EventLog.open(tmp_path / "opened.log") as log:
            log.append("k")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "new.log").st_mode & 0o777) == oct(0o600)
    assert oct(os.stat(tmp_path / "opened.log").st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_event_data_is_refused_like_a_state_value(tmp_path, value):
    """Finding 11c: ``append`` used to store NaN/inf data as ``null``; ``StateStore.set`` refuses it."""
    from carcore import StateStore

    with pytest.raises(TypeError, match="state value for key 'k' is not JSON-serializable: non-finite float"):
        StateStore().set("k", value)
    path = tmp_path / "j.log"
    with EventLog(path) as log:
        log.append("ok", 1.5)
        size = os.path.getsize(path)
        with pytest.raises(TypeError, match=r"event data for kind 'score' is not JSON-serializable: "
                                            r"non-finite float .* has no JSON representation"):
            log.append("score", value, agent="a")
        with pytest.raises(TypeError, match="event data for kind 'score' is not JSON-serializable: non-finite"):
            log.append_batch([{"kind": "fine", "data": 1}, {"kind": "score", "data": value}])
        with pytest.raises(TypeError, match="event data for kind 'score' is not JSON-serializable: non-finite"):
            Event(0, 0, "score", value)
        assert len(log) == 1 and os.path.getsize(path) == size  # nothing appended, in memory or on disk
    with EventLog.open(path) as again:
        assert [e.data for e in again] == [1.5]


def test_events_are_not_tracked_by_the_cyclic_collector():
    """An event holds only strs, ints, None, its JSON bytes and a cached immutable scalar (no
    cycle is possible): a long log costs full collections nothing."""
    import gc

    log = EventLog()
    e = log.append("k", {"deep": [1, 2]}, agent="a")
    assert not gc.is_tracked(e)
    assert e.data == {"deep": [1, 2]} and log.events()[0].agent == "a"
