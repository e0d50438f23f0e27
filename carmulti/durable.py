"""Durable runs: the coordination's journal of finished agents, resuming from it, replaying it.

``SharedInfra(journal=PATH)`` makes the coordination's event log a journal on
disk (``carcore.EventLog``: every append reaches the OS before it returns;
recovery of a torn tail on open). Besides the agents' own events, it holds one
``"agent.done"`` record per agent that succeeded, appended by
:mod:`carmulti.lifecycle` before the result reaches the pattern::

    {"key": "<sha256 hex>:<occurrence>", "name": spec name, "task": first 120 characters of the task,
     "output": AgentOutput.to_dict(), "writes": [["s", key, value, writer] | ["d", key, writer], ...],
     "isolated": bool, "calls"?: [[tool, params], ...]}

* **Key** (:func:`job_digest`, :meth:`Journal.key`): sha256 over the spec's name,
  system prompt, tools and metadata (canonical JSON) and the task text, plus the
  occurrence of that digest among the jobs submitted so far in this run. Never
  wall time or a pid: the same program submits the same keys.
* **Writes**: the agent's state writes in order (``AgentJob.capture_writes``:
  a recording view over the shared store, an isolated overlay's changes, or
  what a worker ships back anyway).
* **Calls**: tool calls the agent made to a coordinator-side tool executor that
  starts agents itself (``Delegator``'s ``delegate``, ``SpawnSubtask``'s
  ``spawn_subtask``: an executor lists such tools in ``replayed_tools``). A
  replayed agent issues them again, in order, so the agents they start are
  replayed (or run) and counted exactly as in the original run.
* **Resume** (:meth:`Journal.replay`): a job whose key has a record is not run;
  its :class:`~carmulti.executors.AgentRun` is rebuilt from the record (shared:
  writes applied to the store in order; isolated: a fresh overlay holding them,
  merged by the pattern as usual).

:class:`carmulti.testing.ReplayRunner` answers from a journal file instead
(:func:`read_records`), as a runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Iterable, Iterator

import orjson

from .executors.base import AgentJob, AgentRun
from .isolation import AgentContext
from .types import AgentOutput, AgentSpec
from .workspace import WORKSPACE_METADATA_KEY

__all__ = ["DONE_KIND", "TASK_HEAD", "Journal", "RecordingState", "RecordingTools", "apply_writes", "job_digest",
           "overlay_writes", "read_records"]

#: The event kind of an agent's record in the journal.
DONE_KIND = "agent.done"
#: Characters of the task kept in a record (to name what differs when a replay diverges).
TASK_HEAD = 120

_sha256 = hashlib.sha256
_dumps = orjson.dumps
_SORT = orjson.OPT_SORT_KEYS


def job_digest(spec: AgentSpec, task: str) -> str:
    """sha256 (hex) of an agent's inputs: spec name, system prompt, tools, metadata (canonical JSON), task.

    The metadata's ``workspace`` entry (a fresh directory per run, see
    :class:`~carmulti.AgentWorkspace`) is not an input: it is left out.
    """
    md = spec.metadata
    if WORKSPACE_METADATA_KEY in md:
        md = {k: v for k, v in md.items() if k != WORKSPACE_METADATA_KEY}
    try:
        blob = _dumps((spec.name, spec.system_prompt, spec.tools, md, task), option=_SORT)
    except TypeError:  # e.g. a lone surrogate in the task: still a stable digest
        blob = json.dumps([spec.name, spec.system_prompt, list(spec.tools), md, task], sort_keys=True,
                          ensure_ascii=True, separators=(",", ":")).encode()
    return _sha256(blob).hexdigest()


def apply_writes(state: Any, writes: Iterable[list[Any]]) -> None:
    """Apply recorded writes (``["s", key, value, writer]`` / ``["d", key, writer]``) to ``state``, in order."""
    for op in writes:
        if op[0] == "s":
            state.set(op[1], op[2], op[3])
        else:
            state.delete(op[1], op[2])


def overlay_writes(ctx: AgentContext) -> list[list[Any]]:
    """An isolated agent's writes: its overlay's changes (sets, then deletes), writer = the agent."""
    sets, deletes = ctx.changes()
    name = ctx.agent_name
    ops: list[list[Any]] = [["s", k, v, name] for k, v in sets.items()]
    ops.extend(["d", k, name] for k in deletes)
    return ops


class RecordingState:
    """A shared agent's state view that records its writes (``ops``) while passing everything to the store.

    Used only for jobs with ``capture_writes`` (a journaled coordination); reads
    and every other method go straight to the store.
    """

    __slots__ = ("_state", "ops")

    def __init__(self, state: Any) -> None:
        self._state = state
        self.ops: list[list[Any]] = []

    def set(self, key: str, value: Any, writer: str | None = "") -> Any:
        t = self._state.set(key, value, writer)
        self.ops.append(["s", key, value, writer or ""])
        return t

    def delete(self, key: str, writer: str | None = "") -> Any:
        t = self._state.delete(key, writer)
        self.ops.append(["d", key, writer or ""])
        return t

    def apply(self, sets: Any, deletes: Iterable[str] = (), writer: str | None = "") -> Any:
        sets = dict(sets)
        deletes = list(deletes)
        t = self._state.apply(sets, deletes, writer)
        w = writer or ""
        self.ops.extend(["s", k, v, w] for k, v in sets.items())
        self.ops.extend(["d", k, w] for k in deletes)
        return t

    def get(self, key: str, default: Any = None) -> Any:
        return self._state.get(key, default)

    def exists(self, key: str) -> bool:
        return bool(self._state.exists(key))

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __len__(self) -> int:
        return len(self._state)

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class RecordingTools:
    """A coordinator-side tool executor that records the calls of its ``replayed_tools`` (see the module docstring)."""

    __slots__ = ("inner", "tools", "calls")

    def __init__(self, inner: Any, tools: Any) -> None:
        self.inner = inner
        self.tools = tools
        self.calls: list[list[Any]] = []

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        if tool in self.tools:
            self.calls.append([tool, params])
        return await self.inner.execute(tool, params)


async def reissue(executor: Any, calls: Iterable[list[Any]]) -> None:
    """Issue recorded tool calls again, in order; a call that fails fails as it did the first time."""
    for tool, params in calls:
        try:
            await executor.execute(tool, params)
        except Exception:  # noqa: BLE001 - the original call's failure was the agent's to handle
            pass


#: A record line as ``Journal`` writes it: the key is found without parsing the JSON (the
#: journal was verified by ``EventLog.open`` just before it is scanned).
_RECORD = re.compile(rb'^[0-9a-f]{8} \{"seq":\d+,"ts_ns":\d+,"kind":"agent\.done","agent":"(?:[^"\\]|\\.)*",'
                     rb'"action_id":null,"proposal_id":null,"data":\{"key":"([0-9a-f]{64}:\d+)"', re.M)


class Journal:
    """The finished agents of a journaled coordination: keys, records, replays.

    Args:
        log: The coordination's journal (an ``EventLog`` on a file), already
            recovered; its ``"agent.done"`` records are the agents to replay.

    Attributes:
        replayed: Agents replayed from a record so far.
    """

    __slots__ = ("log", "done", "counts", "replayed", "_raw")

    def __init__(self, log: Any) -> None:
        self.log = log
        self.done: dict[str, Any] = {}  # key -> (start, end) of its record in _raw, or its data
        self._raw = memoryview(b"")
        self.counts: dict[str, int] = {}
        self.replayed = 0
        if not len(log):
            return
        path = log.path
        if path is None:  # an in-memory log: decode its events
            for e in log.filter(kind=DONE_KIND):
                d = e.data
                if type(d) is dict and type(d.get("key")) is str and type(d.get("output")) is dict:
                    self.done.setdefault(d["key"], d)
            return
        with open(path, "rb") as f:
            raw = f.read()
        done = self.done
        for m in _RECORD.finditer(raw):
            key = m.group(1).decode()
            if key not in done:
                done[key] = (m.start() + 9, raw.index(b"\n", m.end()))
        self._raw = memoryview(raw)

    def key(self, job: AgentJob) -> str:
        """The key of ``job``: its digest and its occurrence among the jobs submitted so far (counts it)."""
        digest = job_digest(job.spec, job.task)
        counts = self.counts
        n = counts.get(digest, 0)
        counts[digest] = n + 1
        return f"{digest}:{n}"

    def take(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, if there is one (each record is replayed once)."""
        done = self.done
        if not done:
            return None
        at = done.pop(key, None)
        if at is None or type(at) is dict:
            return at
        rec: dict[str, Any] = orjson.loads(self._raw[at[0]:at[1]])["data"]
        if not done:
            self._raw = memoryview(b"")  # every record replayed: drop the file's bytes
        return rec

    @staticmethod
    def prepare(job: AgentJob) -> None:
        """Before ``job`` runs: capture its state writes and its agent-starting tool calls."""
        job.capture_writes = True
        tex = job.tool_executor
        if tex is not None:
            tools = getattr(tex, "replayed_tools", None)
            if tools:
                job.tool_executor = RecordingTools(tex, tools)

    async def replay(self, job: AgentJob, rec: dict[str, Any], state: Any) -> AgentRun:
        """``job``'s run rebuilt from its record: its tool calls issued again, its writes applied, its output."""
        calls = rec.get("calls")
        if calls and job.tool_executor is not None:
            await reissue(job.tool_executor, calls)
        writes = rec.get("writes")
        ctx = None
        if job.isolated:
            ctx = AgentContext(job.spec.name, state)
            if writes:
                apply_writes(ctx.local_state, writes)
        elif writes:
            apply_writes(state, writes)
        out = AgentOutput.from_dict(rec["output"])
        self.replayed += 1
        return AgentRun(out, None, out.duration_ms, ctx)

    @staticmethod
    def entry(key: str, job: AgentJob, run: AgentRun) -> dict[str, Any] | None:
        """The journal record (``append_batch`` form) of a finished run, or ``None`` when it did not succeed."""
        out = run.output
        if out is None or run.error is not None:
            return None
        name = job.spec.name
        data: dict[str, Any] = {"key": key, "name": name, "task": job.task[:TASK_HEAD], "output": out.to_dict(),
                                "writes": run.writes or [], "isolated": job.isolated}
        tex = job.tool_executor
        if type(tex) is RecordingTools and tex.calls:
            data["calls"] = tex.calls
        return {"kind": DONE_KIND, "data": data, "agent": name}

    def record(self, key: str, job: AgentJob, run: AgentRun) -> None:
        """Append the record of ``job`` if it succeeded."""
        rec = self.entry(key, job, run)
        if rec is not None:
            self.log.append(rec["kind"], rec["data"], agent=rec["agent"])

    def record_many(self, entries: Iterable[dict[str, Any] | None]) -> None:
        """Append the records of finished runs in one write (``None`` entries skipped)."""
        recs = [e for e in entries if e is not None]
        if recs:
            self.log.append_batch(recs)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``"agent.done"`` records' data of the journal at ``path``, read without taking its writer lock.

    Records are read front to back up to the first damaged line (a torn tail or
    worse: nothing after it is trusted, as ``EventLog.open`` would not).

    Raises:
        OSError: the file cannot be read.
    """
    import zlib

    with open(os.fspath(path), "rb") as f:
        data = f.read()
    out: list[dict[str, Any]] = []
    marker = b'"kind":"' + DONE_KIND.encode() + b'"'
    pos, n = 0, len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        pos = nl + 1
        if len(line) < 11 or line[8:9] != b" ":
            break
        body = line[9:]
        try:
            if int(line[:8], 16) != zlib.crc32(body):
                break
        except ValueError:
            break
        if marker not in body:
            continue
        try:
            rec = orjson.loads(body)
        except orjson.JSONDecodeError:
            break
        d = rec.get("data") if type(rec) is dict else None
        if rec.get("kind") == DONE_KIND and type(d) is dict and type(d.get("key")) is str:
            out.append(d)
    return out
