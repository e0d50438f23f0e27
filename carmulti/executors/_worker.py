"""Worker process of the :class:`~carmulti.ProcessExecutor` (the process target is :func:`main`).

One worker runs one uvloop loop with many agents concurrently. It talks to the
coordinator over two DEALER sockets connected to the coordinator's ROUTER:

* the main socket (identity ``w{index}.{gen}``), driven by ``loop.add_reader``:
  job frames in, result/event/request batches out (flushed once per loop
  iteration), tool and mailbox replies in;
* the RPC socket (identity ``w{index}.{gen}/r``), used *synchronously* for the
  agent's state reads (``Runtime`` reads state synchronously) and for the
  synchronous mailbox methods (``register``, ``try_recv``, ...).

State: an agent's reads fall through to the coordinator's live store (one RPC
per read of a key the agent has not written itself); its writes and deletes go
to a local layer and travel back, in order, with its result. Events are
buffered per ``SharedInfra`` and flushed with every batch. The budget is the
coordinator's ``CoordinationBudget`` attached by shared-memory name.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import orjson
import zmq

from ..errors import WireProtocolError
from ..isolation import AgentContext, TaskScope
from ..mailbox import Mailbox
from ..runtime import Runtime
from ..types import AgentOutput, AgentSpec, Message
from . import _wire as W
from .base import check_output, exception_text

__all__ = ["main"]

log = logging.getLogger("carmulti.executors.worker")

#: Same validation as carcore's StateStore/EventLog: datetimes and dataclasses are refused.
_STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def main(cfg: dict[str, Any]) -> None:
    """Process entry point: run the worker until the coordinator says ``stop`` or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the coordinator, which stops us
    import uvloop

    uvloop.run(_Worker(cfg).main())


# -- values across the wire (mailbox calls) ---------------------------------------------

def enc_value(v: Any) -> Any:
    """Messages as tagged objects; everything else as JSON."""
    from ..pool import AgentMessage

    if isinstance(v, Message):
        return {"$msg": v.to_dict()}
    if isinstance(v, AgentMessage):
        return {"$amsg": {"from_id": v.from_id, "to": v.to, "content": v.content}}
    return v


def dec_value(v: Any) -> Any:
    if type(v) is dict and len(v) == 1:
        if "$msg" in v:
            return Message.from_dict(v["$msg"])
        if "$amsg" in v:
            from ..pool import AgentMessage

            d = v["$amsg"]
            return AgentMessage(d["from_id"], d["to"], d["content"])
    return v


# -- liveness ----------------------------------------------------------------------------

def _heartbeat(ctx: Any, ident: bytes, endpoint: str, interval_s: float, stop: threading.Event) -> None:
    """Thread: tell the coordinator every ``interval_s`` that this process is alive.

    A thread, not a loop callback: a runner busy in Python code (or in C code
    that releases the GIL) keeps its worker alive, while a stopped process
    (SIGSTOP) or one wedged in C code holding the GIL goes silent and is
    replaced by the coordinator after ``heartbeat_timeout_s``.
    """
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.IDENTITY, ident)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 4)
        sock.connect(endpoint)
        frame = [W.VERSION, orjson.dumps({"t": "hb"})]
        while True:
            try:
                sock.send_multipart(frame, zmq.NOBLOCK)
            except zmq.Again:  # the coordinator is behind: it still has beats to read
                pass
            if stop.wait(interval_s):
                return
    finally:
        sock.close(linger=0)


# -- the agent's state view ---------------------------------------------------------------

_ABSENT = object()


class _StateView:
    """Reads fall through to the coordinator (synchronous RPC); writes stay local, recorded in order."""

    __slots__ = ("_w", "_i", "_sets", "_dels", "ops")

    def __init__(self, w: "_Worker", infra_id: int) -> None:
        self._w = w
        self._i = infra_id
        self._sets: dict[str, bytes] = {}
        self._dels: set[str] = set()
        self.ops: list[list[Any]] = []

    def get(self, key: str, default: Any = None) -> Any:
        b = self._sets.get(key)
        if b is not None:
            return orjson.loads(b)
        if key in self._dels:
            return default
        r = self._w.rpc({"op": "get", "i": self._i, "k": key})
        return r[1] if r and r[0] else default

    def exists(self, key: str) -> bool:
        if key in self._sets:
            return True
        if key in self._dels:
            return False
        return bool(self._w.rpc({"op": "exists", "i": self._i, "k": key}))

    __contains__ = exists

    def keys(self) -> list[str]:
        remote = self._w.rpc({"op": "keys", "i": self._i})
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
                (non-finite float, integer outside 64 bits, datetime, dataclass, ...).
        """
        if not isinstance(key, str):
            raise TypeError(f"state key must be a str, got {type(key).__name__}")
        t = type(value)
        if t is float and not math.isfinite(value):
            raise TypeError(f"state value for key {key!r} is not JSON-serializable: "
                            f"non-finite float {value!r} has no JSON representation")
        if t is int and not -(2**63) <= value < 2**64:
            raise TypeError(f"state value for key {key!r} is not JSON-serializable: "
                            f"integer {value} exceeds the 64-bit range")
        try:
            b = orjson.dumps(value, option=_STRICT_JSON)
        except TypeError as exc:
            raise TypeError(f"state value for key {key!r} is not JSON-serializable: {exc}") from None
        self._sets[key] = b
        self._dels.discard(key)
        self.ops.append(["s", key, orjson.Fragment(b), writer or ""])

    def delete(self, key: str, writer: str | None = "") -> None:
        self._sets.pop(key, None)
        self._dels.add(key)
        self.ops.append(["d", key, writer or ""])

    def changes(self) -> tuple[dict[str, Any], list[str]]:
        """This agent's pending ``(sets, deletes)`` (copies), like ``carcore.Overlay.changes``."""
        return {k: orjson.loads(b) for k, b in self._sets.items()}, list(self._dels)

    def discard(self) -> None:
        """Drop this agent's pending writes and deletes (nothing is shipped back for them)."""
        self._sets.clear()
        self._dels.clear()
        self.ops.clear()

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
            self._sets.pop(key, None)
            self._dels.discard(key)
            self.ops = [op for op in self.ops if op[1] != key]


class _EventSink:
    """``Runtime.log`` in a worker: buffers records for the coordinator's ``EventLog.append_batch``."""

    __slots__ = ("_w", "_i")

    def __init__(self, w: "_Worker", infra_id: int) -> None:
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
            if size > limit - 4 * W.FRAME_OVERHEAD:
                raise ValueError(W.too_big(f"event data for kind {kind!r}", size, limit))
            rec["data"] = data
        if agent is not None:
            rec["agent"] = agent
        if action_id is not None:
            rec["action_id"] = action_id
        if proposal_id is not None:
            rec["proposal_id"] = proposal_id
        w = self._w
        buf = w.out_ev.get(self._i)
        if buf is None:
            buf = w.out_ev[self._i] = []
        buf.append(rec)
        w.schedule_flush()


# -- proxies for coordinator-side objects ----------------------------------------------------

class _RemoteTools:
    """The runtime's tool executor: each call runs on the coordinator's ``job.tool_executor``."""

    __slots__ = ("_w", "_job")

    def __init__(self, w: "_Worker", job: int) -> None:
        self._w = w
        self._job = job

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        return await self._w.request({"op": "tool", "job": self._job, "tool": tool, "params": params})


class RemoteInbox:
    """An inbox that lives in the coordinator (same API as :class:`~carmulti.Inbox`)."""

    __slots__ = ("_w", "_job", "_o", "name", "capacity", "_late")

    def __init__(self, w: "_Worker", job: int, oid: int, name: str, capacity: int) -> None:
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
        v = dec_value(await self._w.request({"op": "call", "job": self._job, "o": self._o, "m": "recv",
                                             "a": [], "kw": {"timeout_s": timeout_s}}, late_sink=self))
        if self._late:  # replies to earlier, cancelled recvs arrived first: they are older
            self._late.append(v)
            return self._late.popleft()
        return v

    def try_recv(self) -> Any | None:
        if self._late:
            return self._late.popleft()
        return dec_value(self._w.rpc_call(self._job, self._o, "try_recv", []))

    def qsize(self) -> int:
        return self._w.rpc_call(self._job, self._o, "qsize", [])

    def __aiter__(self) -> "RemoteInbox":
        return self

    async def __anext__(self) -> Any:
        return await self.recv()


def _inbox_from(w: "_Worker", job: int, v: Any) -> RemoteInbox:
    return RemoteInbox(w, job, v["$inbox"], v["name"], v["cap"])


class RemoteMailbox:
    """A :class:`~carmulti.Mailbox` that lives in the coordinator, which brokers messages by name.

    Same API and semantics (bounded inboxes, backpressure, ``MailboxFull``,
    ``MailboxSend`` for unknown agents); agents in any worker sharing the
    coordinator's mailbox reach each other.
    """

    __slots__ = ("_w", "_job", "_o", "buffer_size", "inbox")

    def __init__(self, w: "_Worker", job: int, oid: int, buffer_size: int) -> None:
        self._w = w
        self._job = job
        self._o = oid
        self.buffer_size = buffer_size
        self.inbox: RemoteInbox | None = None

    def register(self, name: str) -> RemoteInbox:
        return _inbox_from(self._w, self._job, self._w.rpc_call(self._job, self._o, "register", [name]))

    def unregister(self, name: str) -> None:
        self._w.rpc_call(self._job, self._o, "unregister", [name])

    def names(self) -> list[str]:
        return self._w.rpc_call(self._job, self._o, "names", [])

    def __contains__(self, name: object) -> bool:
        return bool(self._w.rpc_call(self._job, self._o, "contains", [name]))

    async def send(self, msg: Message, *, timeout_s: float | None = None) -> None:
        await self._w.request({"op": "call", "job": self._job, "o": self._o, "m": "send", "a": [enc_value(msg)],
                               "kw": {"timeout_s": timeout_s}})

    async def broadcast(self, msg: Message, *, timeout_s: float | None = None) -> int:
        return await self._w.request({"op": "call", "job": self._job, "o": self._o, "m": "broadcast",
                                      "a": [enc_value(msg)], "kw": {"timeout_s": timeout_s}})


class RemoteRouter:
    """The coordinator's :class:`~carmulti.MessageRouter` seen from a worker."""

    __slots__ = ("_w", "_job", "_o")

    def __init__(self, w: "_Worker", job: int, oid: int) -> None:
        self._w = w
        self._job = job
        self._o = oid

    def register(self, agent_id: int) -> RemoteInbox:
        return _inbox_from(self._w, self._job, self._w.rpc_call(self._job, self._o, "register", [agent_id]))

    def unregister(self, agent_id: int) -> None:
        self._w.rpc_call(self._job, self._o, "unregister", [agent_id])

    def agent_count(self) -> int:
        return self._w.rpc_call(self._job, self._o, "agent_count", [])

    async def send(self, msg: Any, *, timeout_s: float | None = None) -> None:
        await self._w.request({"op": "call", "job": self._job, "o": self._o, "m": "send", "a": [enc_value(msg)],
                               "kw": {"timeout_s": timeout_s}})


class RemotePooledMailbox:
    """The ``mailbox`` a pooled agent's runner gets on the process executor (see ``PooledMailbox``)."""

    __slots__ = ("agent_id", "inbox", "router")

    def __init__(self, agent_id: int, inbox: RemoteInbox, router: RemoteRouter) -> None:
        self.agent_id = agent_id
        self.inbox = inbox
        self.router = router

    async def send(self, to: int, content: str, *, timeout_s: float | None = None) -> None:
        from ..pool import AgentMessage

        await self.router.send(AgentMessage(self.agent_id, to, content), timeout_s=timeout_s)


# -- the worker ----------------------------------------------------------------------------------

class _WInfra:
    """One coordination's budget (attached shared memory), policies and event sink, in this worker."""

    __slots__ = ("budget", "policies", "sink", "error", "jobs", "forgotten")

    def __init__(self, budget: Any, policies: Any, sink: _EventSink, error: str | None = None) -> None:
        self.budget = budget
        self.policies = policies
        self.sink = sink
        self.error = error
        self.jobs = 0  # running jobs of this coordination
        self.forgotten = False  # the coordinator is done with it: release when its last job ends

    def release(self) -> None:
        if self.budget is not None:
            try:
                self.budget.close()
            except Exception:  # noqa: BLE001 - best effort: a mapping, not data
                pass
            self.budget = None


class _WJob:
    __slots__ = ("id", "spec", "task", "view", "timeout", "timed_out", "coord_cancelled", "finished",
                 "timer", "t0", "infra", "infra_id")

    def __init__(self, jid: int, spec: AgentSpec, view: _StateView, timeout: Any) -> None:
        self.id = jid
        self.infra: _WInfra | None = None
        self.infra_id = 0
        self.spec = spec
        self.task: asyncio.Task[Any] | None = None
        self.view = view
        self.timeout = timeout
        self.timed_out = False
        self.coord_cancelled = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.t0 = time.perf_counter()


class _Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.index: int = cfg["index"]
        self.gen: int = cfg["gen"]
        self.max_frame_bytes: int = cfg["max_frame_bytes"]
        self.batch_size: int = cfg["batch_size"]
        self.grace: float = cfg["cancel_grace_s"]
        self.rpc_timeout: float = cfg["rpc_timeout_s"]
        self.runners: dict[int, Any] = {}
        self.runner_errors: dict[int, str] = {}
        self.infras: dict[int, _WInfra] = {}
        self.jobs: dict[int, _WJob] = {}
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.late_sinks: dict[int, Any] = {}  # rid -> RemoteInbox of a cancelled recv
        self.out_res: list[dict[str, Any]] = []
        self.out_req: list[dict[str, Any]] = []
        self.out_ev: dict[int, list[dict[str, Any]]] = {}
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.flush_scheduled = False
        self.rejected = 0
        self.next_rid = 1
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    # -- lifecycle ---------------------------------------------------------------------------
    async def main(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        ctx = self.ctx = zmq.Context()
        ident = f"w{self.index}.{self.gen}".encode()
        sock = self.sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, ident)
        sock.setsockopt(zmq.SNDHWM, self.cfg["hwm"])
        sock.setsockopt(zmq.RCVHWM, self.cfg["hwm"])
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.cfg["endpoint"])
        rsock = self.rsock = ctx.socket(zmq.DEALER)
        rsock.setsockopt(zmq.IDENTITY, ident + b"/r")
        rsock.setsockopt(zmq.LINGER, 0)
        maxmsg = self.max_frame_bytes + W.SOCKET_SLACK  # a bigger message disconnects its sender
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsg)
        rsock.setsockopt(zmq.MAXMSGSIZE, maxmsg)
        rsock.connect(self.cfg["endpoint"])
        self.stopped: asyncio.Future[None] = loop.create_future()
        beat_stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(ctx, ident + b"/h", self.cfg["endpoint"],
                                                         float(self.cfg.get("heartbeat_interval_s", 1.0)), beat_stop),
                                name="carmulti-heartbeat", daemon=True)
        beat.start()
        loop.add_reader(sock.FD, self._on_readable)
        parent_fd = None
        try:
            from multiprocess import parent_process

            pp = parent_process()
            parent_fd = pp.sentinel if pp is not None else None
        except Exception:  # noqa: BLE001 - best effort parent-death detection
            parent_fd = None
        if parent_fd is not None:
            loop.add_reader(parent_fd, self._parent_died)
        self._send([W.VERSION, orjson.dumps({"t": "hello", "pid": os.getpid(), "index": self.index,
                                             "gen": self.gen})])
        if self.cfg.get("gc_freeze", True):
            gc.collect()
            gc.freeze()  # start-up objects (modules, classes) are never scanned again
        gc.set_threshold(*self.cfg.get("gc_threshold", (50_000, 20, 100)))
        loop.call_soon(self._on_readable)
        try:
            await self.stopped
        finally:
            loop.remove_reader(sock.FD)
            if parent_fd is not None:
                loop.remove_reader(parent_fd)
            tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=0.2)
            for wi in self.infras.values():
                wi.release()
            beat_stop.set()
            beat.join(5.0)
            sock.close(linger=0)
            rsock.close(linger=0)
            ctx.term()

    def _parent_died(self) -> None:
        log.warning("carmulti worker %d: coordinator died; exiting", os.getpid())
        os._exit(3)

    # -- receiving ------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self.sock
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                try:
                    body, blob = W.decode(frames, W.TO_WORKER, self.max_frame_bytes)
                except WireProtocolError as exc:
                    self.rejected += 1
                    if self.rejected <= 3 or self.rejected % 1000 == 0:  # rate-limited: a flood logs a few lines
                        log.warning("carmulti worker %d rejected a frame (%d so far): %s", os.getpid(),
                                    self.rejected, exc)
                    nack: dict[str, Any] = {"t": "nack", "err": str(exc)}
                    if len(frames) >= 2:
                        jobs = [j for j in W.salvage_ids(frames[1], "jobs", "id") if j not in self.jobs]
                        if jobs:
                            nack["jobs"] = jobs  # the coordinator fails exactly these
                    self._send([W.VERSION, orjson.dumps(nack)])
                    continue
                self._dispatch(body, blob)
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:  # socket closed during shutdown
            if exc.errno != zmq.ENOTSOCK:
                raise
            return
        if self.backlog:
            self._drain_backlog()

    def _dispatch(self, body: dict[str, Any], blob: bytes | None) -> None:
        t = body["t"]
        if t == "jobs":
            for j in body["jobs"]:
                self._start_job(j)
        elif t == "ret":
            for r in body["rets"]:
                fut = self.pending.pop(r["rid"], None)
                if fut is None or fut.done():
                    sink = self.late_sinks.pop(r["rid"], None)
                    v = r.get("ok")
                    if sink is not None and isinstance(v, dict) and ("$msg" in v or "$amsg" in v):
                        sink._late.append(dec_value(v))  # the recv was cancelled here: keep the message
                    continue
                if "ok" in r:
                    fut.set_result(r["ok"])
                else:
                    fut.set_exception(W.decode_error(r["err"]))
        elif t == "runner":
            import dill

            try:
                self.runners[body["id"]] = dill.loads(blob)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001
                self.runner_errors[body["id"]] = f"the runner could not be loaded in the worker: {exception_text(exc)}"
        elif t == "infra":
            import dill

            iid = body["id"]
            sink = _EventSink(self, iid)
            try:
                budget, policies = dill.loads(blob)  # type: ignore[arg-type]
                self.infras[iid] = _WInfra(budget, policies, sink)
            except Exception as exc:  # noqa: BLE001
                self.infras[iid] = _WInfra(None, None, sink, f"the infra could not be loaded in the worker: {exception_text(exc)}")
        elif t == "cancel":
            for jid in body["jobs"]:
                job = self.jobs.get(jid)
                if job is not None and job.task is not None:
                    job.coord_cancelled = True
                    job.task.cancel()
        elif t == "ping":
            pong: dict[str, Any] = {"t": "pong", "n": body["n"], "rejected": self.rejected}
            asked = body.get("jobs")
            if asked:
                # jobs the coordinator still waits for that this worker neither runs nor has answered:
                # lost on the way (a frame dropped). Results already finished go out first.
                self._flush()
                pong["unknown"] = [j for j in asked if j not in self.jobs]
            self._send([W.VERSION, orjson.dumps(pong)])
        elif t == "forget":
            for rid in body.get("runners", ()):
                self.runners.pop(rid, None)
                self.runner_errors.pop(rid, None)
            for iid in body.get("infras", ()):
                self._forget_infra(iid)
        elif t == "stop":
            if not self.stopped.done():
                self.stopped.set_result(None)
        # "rret" on the main socket is a late RPC reply: ignored

    # -- jobs -------------------------------------------------------------------------------------
    def _start_job(self, j: dict[str, Any]) -> None:
        jid = j["id"]
        t0 = time.perf_counter()
        wi = self.infras.get(j["i"])
        runner = self.runners.get(j["r"])
        try:
            spec = AgentSpec.from_dict(j["spec"])
        except (TypeError, ValueError) as exc:
            self._result(jid, None, f"invalid agent spec: {exc}", 0.0, None)
            return
        if runner is None or wi is None or wi.error:
            err = (self.runner_errors.get(j["r"]) if runner is None else None) or (wi.error if wi else None) \
                or "internal: the worker never received this job's runner/infra"
            self._result(jid, None, err, 0.0, None)
            return
        view = _StateView(self, j["i"])
        rt = Runtime(view, wi.sink, wi.policies, agent=spec.name, budget=wi.budget)
        tools = j.get("tools")
        if tools:
            validate = j.get("tv", True)
            for name, schema in tools.items():
                rt.register_tool(name, schema, validate=validate)
        if j.get("st", True):
            for name in spec.tools:
                rt.register_tool(name)
        if j.get("tex"):
            rt.set_executor(_RemoteTools(self, jid))
        mb = j.get("mb")
        if mb is None:
            mailbox: Any = Mailbox()
        elif mb["k"] == "mb":
            mailbox = RemoteMailbox(self, jid, mb["o"], mb["bs"])
        else:
            mailbox = RemotePooledMailbox(mb["aid"], RemoteInbox(self, jid, mb["ib"], str(mb["aid"]), mb["cap"]),
                                          RemoteRouter(self, jid, mb["rt"]))
        job = _WJob(jid, spec, view, j.get("to"))
        job.t0 = t0
        job.infra, job.infra_id = wi, j["i"]
        wi.jobs += 1
        self.jobs[jid] = job
        try:
            coro = runner.run(spec, j["task"], rt, mailbox)
        except Exception as exc:  # noqa: BLE001 - a sync failure building the coroutine
            self._finish(job, None, exception_text(exc))
            return
        if j.get("iso"):
            ctx = AgentContext.__new__(AgentContext)
            ctx.agent_name = spec.name
            ctx.parent_state = None
            ctx.local_state = view
            coro = TaskScope.run(ctx, coro)
        job.task = self.loop.create_task(self._run(job, coro, rt))
        if job.timeout is not None:
            job.timer = self.loop.call_later(job.timeout, self._on_timeout, job)

    async def _run(self, job: _WJob, coro: Any, rt: Runtime) -> None:
        result: Any = None
        err: str | None = None
        try:
            result = await coro
        except asyncio.CancelledError:
            if not job.timed_out:
                if job.coord_cancelled or self.stopped.done():
                    job.finished = True
                    self.jobs.pop(job.id, None)
                    self._job_ended(job)
                    return
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # someone cancelled this job's task: let it end
                # the runner itself raised CancelledError (e.g. awaited a task it had cancelled)
                err = "join error: CancelledError raised by the runner"
        except Exception as exc:  # noqa: BLE001 - agent failures are values
            err = exception_text(exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, GeneratorExit, KeyboardInterrupt in a runner
            err = f"join error: {type(exc).__name__}: {exc}"  # a crashed agent, never a dead worker task
        if job.timer is not None:
            job.timer.cancel()
        if job.finished:
            return
        if job.timed_out:
            self._finish(job, None, f"timeout after {job.timeout}s")
            return
        if err is not None:
            self._finish(job, None, err)
            return
        dur = (time.perf_counter() - job.t0) * 1000.0
        out, err = check_output(result, job.spec, dur, rt)
        self._finish(job, out, err, dur)

    def _on_timeout(self, job: _WJob) -> None:
        if job.finished or job.task is None or job.task.done():
            return
        job.timed_out = True
        job.task.cancel()
        job.timer = self.loop.call_later(self.grace, self._grace_expired, job)

    def _grace_expired(self, job: _WJob) -> None:
        if job.finished or job.task is None or job.task.done():
            return
        # The runner ignored cancellation: report the timeout, then ask to be killed.
        self._finish(job, None, f"timeout after {job.timeout}s")
        self._flush()
        self._send([W.VERSION, orjson.dumps({"t": "stuck", "job": job.id})])

    def _forget_infra(self, iid: int) -> None:
        wi = self.infras.get(iid)
        if wi is None:
            return
        if wi.jobs:
            wi.forgotten = True  # released when its last running job ends
            return
        del self.infras[iid]
        wi.release()

    def _job_ended(self, job: _WJob) -> None:
        wi = job.infra
        if wi is not None:
            job.infra = None
            wi.jobs -= 1
            if wi.forgotten and wi.jobs == 0 and self.infras.get(job.infra_id) is wi:
                self._forget_infra(job.infra_id)

    def _finish(self, job: _WJob, out: AgentOutput | None, err: str | None, dur: float | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        self.jobs.pop(job.id, None)
        self._job_ended(job)
        if dur is None:
            dur = (time.perf_counter() - job.t0) * 1000.0
        self._result(job.id, out, err, dur, job.view.ops or None)

    def _result(self, jid: int, out: AgentOutput | None, err: str | None, dur: float, ops: list[Any] | None) -> None:
        if out is not None:  # a runner-reported failure travels inside the output (its error field)
            r = {"id": jid, "out": W.output_to_wire(out), "err": None, "dur": dur}
        else:
            r = {"id": jid, "out": None, "err": err, "dur": dur}
        if ops:
            r["ops"] = ops
        self.out_res.append(r)
        self.schedule_flush()

    # -- requests to the coordinator -----------------------------------------------------------------
    async def request(self, body: dict[str, Any], late_sink: Any = None) -> Any:
        """An async request to the coordinator.

        Args:
            late_sink: A ``RemoteInbox`` that keeps the reply if it arrives after
                this request was cancelled (a received message must not be lost):
                whichever of the reply and the cancellation comes first, a message
                the coordinator handed out ends up in the sink's buffer.
        """
        rid = self.next_rid
        self.next_rid += 1
        body["rid"] = rid
        fut = self.loop.create_future()
        self.pending[rid] = fut
        if late_sink is not None:
            self.late_sinks[rid] = late_sink  # until the coordinator's reply has been taken care of
        self.out_req.append(body)
        self.schedule_flush()
        try:
            v = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # the reply won the race against our cancellation: keep a message it carries
                sink = self.late_sinks.pop(rid, None)
                v = fut.result()
                if sink is not None and isinstance(v, dict) and ("$msg" in v or "$amsg" in v):
                    sink._late.append(dec_value(v))
            elif self.pending.pop(rid, None) is not None:
                # not answered yet: ask the coordinator to stop; its reply (it always sends
                # one) is routed to late_sinks by _dispatch
                self.out_req.append({"rid": self.next_rid, "op": "cancel", "target": rid})
                self.next_rid += 1
                self.schedule_flush()
            raise
        if late_sink is not None:
            self.late_sinks.pop(rid, None)
        return v

    def rpc(self, body: dict[str, Any]) -> Any:
        """A synchronous request/reply on the RPC socket (blocks this worker's loop until answered).

        Raises:
            TimeoutError: no answer within ``rpc_timeout_s``.
        """
        rid = self.next_rid
        self.next_rid += 1
        body["t"] = "rpc"
        body["rid"] = rid
        rs = self.rsock
        rs.send_multipart([W.VERSION, orjson.dumps(body)])
        deadline = time.monotonic() + self.rpc_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not rs.poll(int(left * 1000) + 1):
                raise TimeoutError(f"the coordinator did not answer a state/mailbox request within {self.rpc_timeout}s")
            frames = rs.recv_multipart()
            try:
                rep, _ = W.decode(frames, W.TO_WORKER, self.max_frame_bytes)
            except WireProtocolError as exc:
                self.rejected += 1
                log.warning("carmulti worker %d rejected an RPC reply: %s", os.getpid(), exc)
                continue
            if rep["t"] == "rret" and rep["rid"] == rid:
                break
        if "ok" in rep:
            return rep["ok"]
        raise W.decode_error(rep["err"])

    def rpc_call(self, job: int, oid: int, method: str, args: list[Any]) -> Any:
        return self.rpc({"op": "call", "job": job, "o": oid, "m": method, "a": [enc_value(a) for a in args]})

    # -- sending -----------------------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        ev = [[i, recs] for i, recs in self.out_ev.items() if recs]
        self.out_ev = {}
        req, self.out_req = self.out_req, []
        res, self.out_res = self.out_res, []
        if not (ev or req or res):
            return
        bs = self.batch_size
        limit = self.max_frame_bytes
        first = True
        for k in range(0, max(len(res), 1), bs):
            chunk = res[k:k + bs]
            body: dict[str, Any] = {"t": "batch", "res": chunk}
            if first:
                if ev:
                    body["ev"] = ev
                if req:
                    body["req"] = req
                first = False
            try:
                data: bytes | None = orjson.dumps(body)
            except TypeError:
                data = None
            if data is not None and len(data) <= limit:
                self._send([W.VERSION, data])
                continue
            for frame in self._split(body):  # rare: something orjson refused, or over the frame limit
                self._send([W.VERSION, frame])

    def _split(self, body: dict[str, Any]) -> list[bytes]:
        """Encode a batch item by item: fail what cannot be sent, and pack the rest into frames by bytes.

        Events go first, then requests, then results: the coordinator handles
        them in that order, so an agent's events still precede its result.
        """
        limit = self.max_frame_bytes
        item_max = limit - W.FRAME_OVERHEAD
        frames: list[bytes] = []
        for i, recs in body.get("ev", ()):
            parts = []
            for rec in recs:
                try:
                    b = orjson.dumps(rec)
                except TypeError as exc:  # validated at append, so only a value mutated since
                    b = orjson.dumps(dict(rec, data=f"<unserializable event data: {exc}>"))
                if len(b) > item_max:
                    b = orjson.dumps(dict(rec, data=f"<event data dropped: {W.too_big('it', len(b), limit)}>"))
                parts.append(b)
            frames += W.pack_frames(b'{"t":"batch","ev":[[%d,[' % i, b"]]]}", parts, limit)
        parts = []
        for q in body.get("req", ()):
            try:
                b = orjson.dumps(q)
                problem = None if len(b) <= item_max else W.too_big("the request", len(b), limit)
            except TypeError:
                bad = W.find_unserializable(q.get("params", q.get("a")), "$.params") or ("$", "not JSON-serializable")
                problem = f"SerializationError: request cannot be sent to the coordinator: {bad[0]}: {bad[1]}"
            if problem is None:
                parts.append(b)
                continue
            fut = self.pending.pop(q["rid"], None)
            if fut is not None and not fut.done():
                from ..errors import ToolError

                fut.set_exception(ToolError(problem))
        frames += W.pack_frames(b'{"t":"batch","req":[', b"]}", parts, limit)
        parts = [self._encode_result(r, item_max) for r in body.get("res", ())]
        frames += W.pack_frames(b'{"t":"batch","res":[', b"]}", parts, limit)
        return frames

    def _encode_result(self, r: dict[str, Any], item_max: int) -> bytes:
        """One result as JSON that fits a frame; else an error result for that agent alone."""
        out = r.get("out")
        try:
            b = orjson.dumps(r)
        except TypeError:
            try:  # a str JSON cannot carry (lone surrogates): tag it
                b = orjson.dumps(dict(r, out=W.escape_strings(out))) if out is not None else orjson.dumps(r)
            except TypeError:
                named = dict(zip(W.OUTPUT_FIELDS, out or ()))
                bad = W.find_unserializable(named, "$.output") or ("$.output", "not JSON-serializable")
                name = named.get("name", "?")
                r = {"id": r["id"], "out": None, "dur": r["dur"], "ops": r.get("ops"),
                     "err": f"SerializationError: agent '{name}' returned an output that cannot be sent to the "
                            f"coordinator: {bad[0]}: {bad[1]}"}
                b = orjson.dumps(r)
        if len(b) <= item_max:
            return b
        what = f"the result of agent '{out[0]}'" if out else "the agent's result"
        ops = r.get("ops")
        if ops:
            what += f" (with {len(ops)} state writes)"
        fail = {"id": r["id"], "out": None, "dur": r["dur"], "err": W.too_big(what, len(b), self.max_frame_bytes)}
        if ops:
            with_ops = orjson.dumps(dict(fail, ops=ops))
            if len(with_ops) <= item_max:
                return with_ops
        return orjson.dumps(fail)

    def _send(self, frames: list[bytes]) -> None:
        if self.backlog:
            self.backlog.append(frames)
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.backlog.append(frames)
            self.loop.call_later(0.005, self._drain_backlog)
            return
        self.loop.call_soon(self._on_readable)  # a send may consume the FD's edge

    def _drain_backlog(self) -> None:
        bl = self.backlog
        while bl:
            try:
                self.sock.send_multipart(bl[0], zmq.NOBLOCK)
            except zmq.Again:
                self.loop.call_later(0.005, self._drain_backlog)
                return
            except zmq.ZMQError:
                return
            bl.popleft()
