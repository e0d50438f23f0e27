"""Worker-side proxies of the process executor: what an agent running in a worker holds.

Owns the objects a worker hands to the shared agent run in place of the
coordinator's: :class:`StateView` (reads fall through to the coordinator's
store by a synchronous RPC, writes stay local and travel back in order with the
result), :class:`EventSink` (events buffered for the coordinator's log),
:class:`RemoteTools` (tool calls run on the coordinator's ``job.tool_executor``),
and the mailbox proxies :class:`RemoteMailbox` (an inbox it registers is hosted
in this worker and other workers put to it directly, see :mod:`.peers`; the
coordinator's mailbox stays the directory), :class:`RemoteInbox` and
:class:`RemoteRouter` (``AgentPool``: the coordinator brokers every message). Bounded
inboxes, backpressure and ``MailboxFull``/``MailboxSend`` behave as in-process.
Each talks to its worker through the small :class:`WorkerLink` interface.
"""

from __future__ import annotations

import collections
import math
import time
from types import MappingProxyType
from typing import Any, Mapping, Protocol

import orjson

from carcore import check_json_value

from ... import tracing as _tracing
from ...budget import BudgetSnapshot
from ...mailbox import Inbox, Mailbox
from ...types import Message
from .payloads import FRAME_OVERHEAD, decode_value, encode_value, too_big

__all__ = ["EventSink", "RemoteBudget", "RemoteInbox", "RemoteMailbox", "RemoteRouter", "RemoteTools", "StateView",
           "WorkerLink"]

#: Same validation as carcore's StateStore/EventLog: datetimes and dataclasses are refused.
_STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class WorkerLink(Protocol):
    """What a proxy needs of its worker (``worker.WorkerProcess``)."""

    max_frame_bytes: int
    out_events: dict[int, list[dict[str, Any]]]
    peers: Any  # ``peers.Peers``: the inboxes this worker hosts, routes to the others

    def rpc(self, body: dict[str, Any]) -> Any:
        """A synchronous request to the coordinator (blocks the worker's loop until answered)."""
        ...

    def rpc_call(self, job: int, oid: int, method: str, args: list[Any]) -> Any:
        """A synchronous call of a coordinator-side mailbox method."""
        ...

    async def request(self, body: dict[str, Any], late_sink: Any = None) -> Any:
        """An asynchronous request to the coordinator."""
        ...

    def schedule_flush(self) -> None:
        """Send what is buffered at the end of this loop iteration."""
        ...


# -- the agent's state view ------------------------------------------------------------------------------------

_NO_DELS: frozenset[str] = frozenset()
_NO_SETS: Mapping[str, bytes] = MappingProxyType({})
_NO_OPS: tuple[()] = ()


class StateView:
    """Reads fall through to the coordinator (synchronous RPC); writes stay local, recorded in order."""

    __slots__ = ("_w", "_i", "_sets", "_dels", "ops")

    def __init__(self, w: "WorkerLink", infra_id: int) -> None:
        self._w = w
        self._i = infra_id
        # A real dict / set / list from the first write or delete on: most agents of a big fan-out never
        # write in a worker (an empty dict is 64 bytes, a set 216, a list 56; a million agents in flight).
        self._sets: Mapping[str, bytes] = _NO_SETS
        self._dels: set[str] | frozenset[str] = _NO_DELS
        #: The writes and deletes in order, shipped back with the result (empty: none).
        self.ops: list[list[Any]] | tuple[()] = _NO_OPS

    def get(self, key: str, default: Any = None) -> Any:
        b = self._sets.get(key)
        if b is not None:
            return orjson.loads(b)
        if key in self._dels:
            return default
        r = self._w.rpc({"op": "get", "infra": self._i, "key": key})
        return r[1] if r and r[0] else default

    def exists(self, key: str) -> bool:
        if key in self._sets:
            return True
        if key in self._dels:
            return False
        return bool(self._w.rpc({"op": "exists", "infra": self._i, "key": key}))

    __contains__ = exists

    def keys(self) -> list[str]:
        remote = self._w.rpc({"op": "keys", "infra": self._i})
        out = [k for k in remote if k not in self._dels and k not in self._sets]
        out.extend(self._sets)
        return out

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Any:
        return iter(self.keys())

    def snapshot(self) -> dict[str, Any]:
        return {k: self.get(k) for k in self.keys()}

    def set(self, key: str, value: Any, writer: str | None = "") -> None:
        """Record a local write; the value is validated as ``carcore.StateStore.set`` does.

        Raises:
            TypeError: ``key`` is not a str or ``value`` is not JSON-serializable
                (non-finite float, integer outside 64 bits, datetime, dataclass, ...),
                from ``carcore.check_json_value``.
        """
        b = check_json_value(value, key)  # the store's own compiled check: same rules, same messages
        sets = self._sets
        if not isinstance(sets, dict):
            sets = self._sets = {}
        sets[key] = b
        dels = self._dels
        if dels and isinstance(dels, set):
            dels.discard(key)
        self._ops().append(["s", key, orjson.Fragment(b), writer or ""])

    def _ops(self) -> list[list[Any]]:
        ops = self.ops
        if not isinstance(ops, list):
            ops = self.ops = []
        return ops

    def delete(self, key: str, writer: str | None = "") -> None:
        sets = self._sets
        if isinstance(sets, dict):
            sets.pop(key, None)
        dels = self._dels
        if not isinstance(dels, set):
            dels = self._dels = set()
        dels.add(key)
        self._ops().append(["d", key, writer or ""])

    def changes(self) -> tuple[dict[str, Any], list[str]]:
        """This agent's pending ``(sets, deletes)`` (copies), like ``carcore.Overlay.changes``."""
        return {k: orjson.loads(b) for k, b in self._sets.items()}, list(self._dels)

    def discard(self) -> None:
        """Drop this agent's pending writes and deletes (nothing is shipped back for them)."""
        self._sets = _NO_SETS
        self._dels = _NO_DELS
        self.ops = _NO_OPS

    def is_local(self, key: str) -> bool:
        """Whether this agent has an unsent write or delete of ``key``."""
        return key in self._sets or key in self._dels

    def revert(self, key: str, writer: str | None = "") -> None:
        """Forget this agent's write/delete of ``key``: nothing about it is shipped back.

        Used by ``Runtime`` to roll back a key the aborted proposal created; no
        recorded op for ``key`` predates it (the runtime reverts only keys that
        had no local change before its write).
        """
        if key in self._sets or key in self._dels:
            if isinstance(self._sets, dict):
                self._sets.pop(key, None)
            if isinstance(self._dels, set):
                self._dels.discard(key)
            self.ops = [op for op in self.ops if op[1] != key]


class EventSink:
    """``Runtime.log`` in a worker: buffers records for the coordinator's ``EventLog.append_batch``."""

    __slots__ = ("_w", "_i")

    def __init__(self, w: "WorkerLink", infra_id: int) -> None:
        self._w = w
        self._i = infra_id

    def append(self, kind: str, data: Any = None, *, agent: str | None = None, action_id: str | None = None,
               proposal_id: str | None = None) -> None:
        """Buffer one event for the coordinator's log.

        Raises:
            TypeError: ``data`` is not JSON-serializable, a NaN or infinite float
                included (as ``EventLog.append``); nothing is buffered.
            ValueError: ``data`` cannot travel in one frame (``max_frame_bytes``).
        """
        rec: dict[str, Any] = {"kind": kind, "ts_ns": time.time_ns()}
        if data is not None:
            if type(data) is float and not math.isfinite(data):
                raise TypeError(f"event data for kind {kind!r} is not JSON-serializable: non-finite float {data!r} "
                                f"has no JSON representation (log None or a string such as {str(data)!r} instead)")
            try:
                size = len(orjson.dumps(data, option=_STRICT_JSON))
            except TypeError as exc:
                raise TypeError(f"event data for kind {kind!r} is not JSON-serializable: {exc}") from None
            limit = self._w.max_frame_bytes
            if size > limit - 4 * FRAME_OVERHEAD:
                raise ValueError(too_big(f"event data for kind {kind!r}", size, limit))
            rec["data"] = data
        if agent is not None:
            rec["agent"] = agent
        if action_id is not None:
            rec["action_id"] = action_id
        if proposal_id is not None:
            rec["proposal_id"] = proposal_id
        w = self._w
        buf = w.out_events.get(self._i)
        if buf is None:
            buf = w.out_events[self._i] = []
        buf.append(rec)
        w.schedule_flush()


# -- the budget, when the worker cannot map the coordinator's shared memory -----------------------------------

class RemoteBudget:
    """A coordination's :class:`~carmulti.CoordinationBudget` seen from a worker on another machine.

    Every call is a synchronous request to the coordinator, which applies it to
    the one shared-memory budget there: the cap on agents, tokens and dollars
    holds exactly across nodes (the coordinator's loop serialises the checks).

    Args:
        w: The worker.
        coordination_id: The coordination's id on the wire.
        limits: Its :class:`~carmulti.BudgetLimits` (read locally).
    """

    __slots__ = ("_w", "_i", "limits")

    def __init__(self, w: "WorkerLink", coordination_id: int, limits: Any) -> None:
        self._w = w
        self._i = coordination_id
        self.limits = limits

    def _call(self, method: str, *args: Any) -> Any:
        return self._w.rpc({"op": "budget", "infra": self._i, "method": method, "args": list(args)})

    def begin_agent(self) -> None:
        """Reserve one agent slot (raises ``BudgetError`` like the coordinator's budget)."""
        self._call("begin_agent")

    def record(self, tokens: Any) -> None:
        """Add one agent's reported spend."""
        if tokens is not None:
            self._call("record", [tokens.input_tokens, tokens.output_tokens, tokens.cost_usd])

    def record_output(self, output: Any) -> None:
        """``record(output.tokens)``."""
        self.record(output.tokens)

    def snapshot(self) -> Any:
        """The coordinator's current totals (a :class:`~carmulti.BudgetSnapshot`)."""
        d = self._call("snapshot")
        return BudgetSnapshot(d["input_tokens"], d["output_tokens"], d["total_tokens"], d["cost_usd"],
                              d["agents_started"], self.limits, d["exhausted"])

    @property
    def exhausted(self) -> bool:
        """A spend limit is crossed (one request to the coordinator)."""
        return bool(self._call("exhausted"))

    def close(self) -> None:
        """Nothing to release: the budget lives in the coordinator."""


# -- proxies for coordinator-side objects ----------------------------------------------------

class RemoteTools:
    """The runtime's tool executor: each call runs on the coordinator's ``job.tool_executor``."""

    __slots__ = ("_w", "_job")

    def __init__(self, w: "WorkerLink", job: int) -> None:
        self._w = w
        self._job = job

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        body = {"op": "tool", "job": self._job, "tool": tool, "params": params}
        if _tracing.ENABLED:  # the tool runs in the coordinator as a child of this call's span
            trace = _tracing.inject()
            if trace is not None:
                body["trace"] = trace
        return await self._w.request(body)


class RemoteInbox:
    """An inbox that lives in the coordinator (same API as :class:`~carmulti.Inbox`)."""

    __slots__ = ("_w", "_job", "_o", "name", "capacity", "_late")

    def __init__(self, w: "WorkerLink", job: int, oid: int, name: str, capacity: int) -> None:
        self._w = w
        self._job = job
        self._o = oid
        self.name = name
        self.capacity = capacity
        self._late: collections.deque[Any] = collections.deque()  # replies to cancelled recvs

    async def recv(self, timeout_s: float | None = None) -> Any:
        """Wait for the next message (``MailboxTimeout`` after ``timeout_s``).

        A message the coordinator already handed out for a ``recv`` that was then
        cancelled here (``asyncio.wait_for``, a timeout) is kept and returned by
        the next ``recv``/``try_recv``: cancelling a receive never loses a message.
        """
        if self._late:
            return self._late.popleft()
        v = decode_value(await self._w.request({"op": "call", "job": self._job, "object": self._o, "method": "recv",
                                             "args": [], "kwargs": {"timeout_s": timeout_s}}, late_sink=self))
        if self._late:  # replies to earlier, cancelled recvs arrived first: they are older
            self._late.append(v)
            return self._late.popleft()
        return v

    def try_recv(self) -> Any | None:
        if self._late:
            return self._late.popleft()
        return decode_value(self._w.rpc_call(self._job, self._o, "try_recv", []))

    def qsize(self) -> int:
        n: int = self._w.rpc_call(self._job, self._o, "qsize", [])
        return n

    def __aiter__(self) -> "RemoteInbox":
        return self

    async def __anext__(self) -> Any:
        return await self.recv()


def _inbox_from(w: "WorkerLink", job: int, v: Any) -> RemoteInbox:
    return RemoteInbox(w, job, v["$inbox"], v["name"], v["cap"])


class RemoteMailbox:
    """A :class:`~carmulti.Mailbox` of the coordinator seen from a worker.

    Same API and semantics (bounded inboxes, backpressure, ``MailboxFull``,
    ``MailboxSend`` for unknown agents); agents in any worker sharing the
    coordinator's mailbox reach each other. ``register`` hosts the inbox in this
    worker; ``send`` puts directly to the worker hosting the recipient's inbox
    (:mod:`.peers`), or through the coordinator when no worker hosts it.
    """

    __slots__ = ("_w", "_job", "_o", "buffer_size", "inbox")

    def __init__(self, w: "WorkerLink", job: int, oid: int, buffer_size: int) -> None:
        self._w = w
        self._job = job
        self._o = oid
        self.buffer_size = buffer_size
        self.inbox: Inbox | None = None

    def register(self, name: str) -> Inbox:
        """The agent's inbox, hosted in this worker (``recv`` is local); the coordinator records where."""
        v = self._w.rpc_call(self._job, self._o, "host", [name])
        inbox: Inbox = self._w.peers.host(self._o, name, v["$hosted"], v["cap"])
        return inbox

    def unregister(self, name: str) -> None:
        self._w.peers.unhost(self._o, name)  # closed here first: no later direct put gets in
        self._w.rpc_call(self._job, self._o, "unregister", [name])

    def names(self) -> list[str]:
        names: list[str] = self._w.rpc_call(self._job, self._o, "names", [])
        return names

    def __contains__(self, name: object) -> bool:
        return bool(self._w.rpc_call(self._job, self._o, "contains", [name]))

    async def send(self, msg: Message, *, timeout_s: float | None = None) -> None:
        peers = self._w.peers
        route = peers.route(self._job, self._o, msg.to)
        if route is not None and await peers.put(self._o, route, msg, timeout_s):
            return  # accepted by the host directly
        await self._w.request({"op": "call", "job": self._job, "object": self._o, "method": "send", "args": [encode_value(msg)],
                               "kwargs": {"timeout_s": timeout_s}})

    async def broadcast(self, msg: Message, *, timeout_s: float | None = None) -> int:
        n: int = await self._w.request({"op": "call", "job": self._job, "object": self._o, "method": "broadcast",
                                        "args": [encode_value(msg)], "kwargs": {"timeout_s": timeout_s}})
        return n


class RemoteRouter:
    """The coordinator's :class:`~carmulti.MessageRouter` seen from a worker."""

    __slots__ = ("_w", "_job", "_o")

    def __init__(self, w: "WorkerLink", job: int, oid: int) -> None:
        self._w = w
        self._job = job
        self._o = oid

    def register(self, agent_id: int) -> RemoteInbox:
        return _inbox_from(self._w, self._job, self._w.rpc_call(self._job, self._o, "register", [agent_id]))

    def unregister(self, agent_id: int) -> None:
        self._w.rpc_call(self._job, self._o, "unregister", [agent_id])

    def agent_count(self) -> int:
        n: int = self._w.rpc_call(self._job, self._o, "agent_count", [])
        return n

    async def send(self, msg: Any, *, timeout_s: float | None = None) -> None:
        await self._w.request({"op": "call", "job": self._job, "object": self._o, "method": "send", "args": [encode_value(msg)],
                               "kwargs": {"timeout_s": timeout_s}})


def job_mailbox(w: "WorkerLink", job: int, desc: Mapping[str, Any] | None) -> Any:
    """The mailbox a job's runner gets, from the job's ``mailbox`` field.

    ``None``: a fresh private :class:`~carmulti.Mailbox`; ``kind == "mailbox"``: a
    :class:`RemoteMailbox` of the coordinator's mailbox; otherwise a pooled agent's
    ``PooledMailbox`` over its remote inbox and router.
    """
    if desc is None:
        return Mailbox._fresh()
    if desc["kind"] == "mailbox":
        return RemoteMailbox(w, job, desc["object"], desc["buffer_size"])
    from ...mailbox import PooledMailbox

    aid = desc["agent_id"]
    return PooledMailbox(aid, RemoteInbox(w, job, desc["inbox"], str(aid), desc["capacity"]),
                         RemoteRouter(w, job, desc["router"]))
