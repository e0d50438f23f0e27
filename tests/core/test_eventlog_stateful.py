"""Hypothesis state machine: a journaled EventLog vs. a list model.

Rules append, batch-append, flush, close+reopen, "crash" (drop the object without
close: every acknowledged append was already written with write(2)), and torn writes
(a prefix of a further record, or garbage, lands after the last record before reopen).
Invariant: the log's events equal the model (the acknowledged prefix).

Subscriptions ride along: rules open subscriptions (cursor, maxsize) and read the items
that are ready (an event, a gap marker, or the end once their log was closed), checked
against a cursor model; a read never waits (it is stepped without an event loop).
"""

from __future__ import annotations

import os

import pytest
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from carcore import Event, EventLog

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
KINDS = st.sampled_from(["start", "step", "done", "ünï\ncode"])
AGENTS = st.none() | st.sampled_from(["a1", "a2"])
_END = object()


def _read_ready(sub):
    """One item of a subscription that has one ready (or has ended), without an event loop."""
    coro = sub.__anext__()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except StopAsyncIteration:
        return _END
    coro.close()
    raise AssertionError("the subscription waited although an item was ready")


class _SubModel:
    """What a subscription should yield: a cursor over the records of the log it follows."""

    def __init__(self, sub, after, maxsize, model):
        self.sub = sub
        self.next = 0 if after is None else after + 1
        self.maxsize = maxsize
        self.model = model  # the acknowledged records (a prefix of them is its log's)
        self.closed_at = None  # records its log held when it was closed
        self.done = False

    @property
    def closed(self):
        return self.closed_at is not None

    @property
    def length(self):
        return len(self.model) if self.closed_at is None else self.closed_at

    def ready(self):
        return self.done or self.closed or self.next < self.length

    def expect(self):
        if self.done:
            return _END
        n = self.length
        if n - self.next > self.maxsize:
            first, self.next = self.next, n - self.maxsize
            return ("gap", self.next - 1, {"from": first, "to": self.next - 1})
        if self.next < n:
            self.next += 1
            return self.next - 1
        assert self.closed
        self.done = True
        return _END


class LogMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="carcore-log-")
        self.path = os.path.join(self.dir, "events.log")
        self.log = EventLog(self.path, fsync="batch", batch_records=3)
        self.model: list[tuple] = []
        self.subs: list[_SubModel] = []

    def teardown(self):
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(kind=KINDS, data=JSON, agent=AGENTS)
    def append(self, kind, data, agent):
        e = self.log.append(kind, data, agent=agent)
        assert e.seq == len(self.model)
        self.model.append((kind, data, agent))

    @rule(recs=st.lists(st.tuples(KINDS, JSON, AGENTS), max_size=4))
    def append_batch(self, recs):
        first = self.log.append_batch([{"kind": k, "data": d, "agent": a} for k, d, a in recs])
        assert first == len(self.model)
        self.model.extend(recs)

    @precondition(lambda self: len(self.subs) < 4)
    @rule(after=st.none() | st.integers(0, 12), maxsize=st.integers(1, 6))
    def subscribe(self, after, maxsize):
        self.subs.append(_SubModel(self.log.subscribe(after=after, maxsize=maxsize), after, maxsize, self.model))

    @precondition(lambda self: any(m.ready() for m in self.subs))
    @rule(data=st.data())
    def read(self, data):
        m = data.draw(st.sampled_from([m for m in self.subs if m.ready()]), label="subscription")
        for _ in range(data.draw(st.integers(1, 4), label="reads")):
            if not m.ready():
                break
            want, got = m.expect(), _read_ready(m.sub)
            if want is _END:
                assert got is _END
            elif isinstance(want, tuple):
                assert (got.kind, got.seq, got.data) == want
            else:
                assert got.seq == want and (got.kind, got.data, got.agent) == self.model[want]

    def _log_closed(self):
        for m in self.subs:
            if m.closed_at is None:  # later records go to a new EventLog object
                m.closed_at = len(self.model)

    @rule()
    def flush(self):
        self.log.flush()

    @rule(policy=st.sampled_from(["always", "batch", "never"]))
    def reopen(self, policy):
        self.log.close()
        self._log_closed()
        self.log = EventLog.open(self.path, fsync=policy)
        assert self.log.recovery.records == len(self.model)
        assert self.log.recovery.truncated_bytes == 0

    @rule()
    def second_writer_is_refused(self):
        # one writer per journal: a second EventLog on the same file is refused while the
        # first is open (process death releases the lock; see test_eventlog's kill test)
        size = os.path.getsize(self.path)
        with pytest.raises(BlockingIOError, match="already open for writing by another EventLog"):
            EventLog.open(self.path)
        assert os.path.getsize(self.path) == size
        assert len(self.log) == len(self.model)

    @rule(data=st.data())
    def torn_write(self, data):
        self.log.close()
        self._log_closed()
        # the bytes a further append would have written, cut short (or zeros / a bad record)
        full = self._line_for(len(self.model))
        cut = data.draw(st.integers(1, len(full) - 1), label="cut")
        bad_crc = b"00000000" + full[8:]
        garbage = data.draw(
            st.sampled_from([full[:cut], b"\x00" * cut, bad_crc, bad_crc[:cut]]), label="tail"
        )
        size = os.path.getsize(self.path)
        with open(self.path, "ab") as f:
            f.write(garbage)
        self.log = EventLog.open(self.path)
        rep = self.log.recovery
        assert rep.records == len(self.model)
        assert rep.truncated_bytes == len(garbage) and rep.torn_offset == size
        assert os.path.getsize(self.path) == size

    def _line_for(self, seq):
        tmpdir = tempfile.mkdtemp(prefix="carcore-probe-")
        try:
            p = os.path.join(tmpdir, "p.log")
            with EventLog(p, fsync="never") as probe:
                for _ in range(seq):
                    probe.append("pad")
                probe.append("lost", {"x": "y" * 20})
            with open(p, "rb") as f:
                return f.read().splitlines(keepends=True)[-1]
        finally:
            shutil.rmtree(tmpdir)

    @invariant()
    def matches_model(self):
        assert len(self.log) == len(self.model)
        evs = self.log.events()
        assert [(e.kind, e.data, e.agent) for e in evs] == self.model
        assert [e.seq for e in evs] == list(range(len(self.model)))
        assert all(isinstance(e, Event) for e in evs)


LogMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestLogMachine = LogMachine.TestCase
