"""What the process executor's coordinator serves to agents running in workers.

Owns the coordinator side of every call an agent makes back to its
coordination: state reads (a synchronous RPC on the worker's second socket),
tool calls (run on ``job.tool_executor``, in the coordinator: this is how
``Delegator`` works across processes) and mailbox calls (the coordinator-side
``Mailbox`` / ``PooledMailbox`` objects, pinned for workers by object id; a
``Mailbox`` is the directory of the inboxes hosted in workers, :mod:`.hosting`,
and brokers what is sent to the others, so bounded inboxes, backpressure,
``MailboxFull`` and ``MailboxSend`` behave exactly as in-process). Replies that cannot fit a frame
become errors naming the size and the limit.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson

from ... import tracing as _tracing
from ...mailbox import Inbox, Mailbox
from ...types import TokenAccounting
from . import wire
from .hosting import Hosts
from .payloads import (FRAME_OVERHEAD, decode_value, encode_error, encode_value, find_unserializable, one_frame,
                       pack_frames, too_big)

from .records import PendingJob, ProcessConfig, RunState, WorkerHandle
from .shipping import ShippedCache
from .transport import Transport

__all__ = ["Services"]


# Methods a worker may call on coordinator-side mailbox objects, by (type name, method).
_ASYNC_METHODS = {("Mailbox", "send"), ("Mailbox", "broadcast"), ("Inbox", "recv"), ("MessageRouter", "send")}
_SYNC_METHODS = {("Mailbox", "register"), ("Mailbox", "host"), ("Mailbox", "route"), ("Mailbox", "unregister"), ("Mailbox", "names"), ("Mailbox", "contains"),
                 ("Inbox", "try_recv"), ("Inbox", "qsize"), ("MessageRouter", "register"),
                 ("MessageRouter", "unregister"), ("MessageRouter", "agent_count")}


class Services:
    """Serves workers' state reads, tool calls and mailbox calls for the jobs they run.

    Args:
        config: The executor's settings.
        state: Shared running/closing flags and the event loop.
        transport: Where replies go.
        shipped: Coordinations by id (state reads name theirs).
        pending: The jobs in flight by id (owned by the scheduler; a call for a
            job no longer there is refused).
    """

    def __init__(self, config: ProcessConfig, state: RunState, transport: Transport, shipped: ShippedCache,
                 pending: dict[int, PendingJob]) -> None:
        self.config = config
        self.state = state
        self.transport = transport
        self.shipped = shipped
        self.pending = pending
        self.objects: dict[int, list[Any]] = {}  # object id -> [object, references]
        self._oid_by_id: dict[int, int] = {}
        self._next_oid = 1
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Inboxes agents registered from workers, hosted there (the direct mailbox path).
        self.hosts = Hosts(transport, lambda: state.loop, config.max_frame_bytes)

    # -- mailbox objects pinned for workers -------------------------------------------------------------------------
    def mailbox_descriptor(self, mb: Any) -> tuple[dict[str, Any], list[int]]:
        """The wire descriptor of a coordinator-side mailbox, and the object ids it pins (one reference each).

        Raises:
            TypeError: ``mb`` is not a ``Mailbox`` or an ``AgentPool`` mailbox.
        """
        from ...mailbox import PooledMailbox

        if isinstance(mb, Mailbox):
            oid = self.pin(mb)
            return {"kind": "mailbox", "object": oid, "buffer_size": mb.buffer_size}, [oid]
        if isinstance(mb, PooledMailbox):
            ib, rt = self.pin(mb.inbox), self.pin(mb.router)
            return {"kind": "pool", "agent_id": mb.agent_id, "inbox": ib, "router": rt,
                    "capacity": mb.inbox.capacity}, [ib, rt]
        raise TypeError(f"a mailbox of type {type(mb).__name__} cannot be shared with a worker process "
                        "(use carmulti.Mailbox or the AgentPool's mailbox)")

    def pin(self, obj: Any) -> int:
        """Pin ``obj`` for workers: its object id, with one more reference."""
        oid = self._oid_by_id.get(id(obj))
        if oid is None or self.objects[oid][0] is not obj:
            oid = self._next_oid
            self._next_oid += 1
            self.objects[oid] = [obj, 0]
            self._oid_by_id[id(obj)] = oid
        self.objects[oid][1] += 1
        return oid

    def unpin(self, oid: int) -> None:
        """Drop one reference taken by :meth:`pin`."""
        ent = self.objects.get(oid)
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] <= 0:
            del self.objects[oid]
            if isinstance(ent[0], Mailbox):  # its jobs all ended: the hosts drop its inboxes
                self.hosts.detach(list(ent[0]._inboxes.values()))
            if self._oid_by_id.get(id(ent[0])) == oid:
                del self._oid_by_id[id(ent[0])]

    # -- asynchronous requests (tools, mailbox send/recv) -----------------------------------------------------------
    def on_request(self, w: WorkerHandle, q: dict[str, Any]) -> None:
        """Start serving one request of a worker's batch; the reply goes back with the next flush."""
        rid = q["rid"]
        op = q["op"]
        if op == "cancel":
            t = w.request_tasks.pop(q["target"], None)
            if t is not None:
                t.cancel()
            return
        p = self.pending.get(q["job"])
        if p is None or p.worker is not w:
            self._reply(w, {"rid": rid, "err": {"type": "RuntimeError", "msg": "the agent's job is no longer running"}})
            return
        if op == "tool":
            tex = p.job.tool_executor
            if tex is None:
                self._reply(w, {"rid": rid, "err": {"type": "ToolError",
                                                    "msg": f"no tool executor installed for tool '{q['tool']}'"}})
                return
            make = functools.partial(tex.execute, q["tool"], q["params"])
            trace = q.get("trace")
        else:
            obj = self.objects.get(q["object"])
            kw = q.get("kwargs") or {}
            if obj is None or (type(obj[0]).__name__, q["method"]) not in _ASYNC_METHODS:
                self._reply(w, {"rid": rid, "err": {"type": "RuntimeError",
                                                    "msg": f"mailbox call {q['method']!r} not allowed or object gone"}})
                return
            make = functools.partial(getattr(obj[0], q["method"]), *[decode_value(a) for a in q["args"]], **kw)
            trace = None
        # the coroutine is created inside the task, so a task cancelled before it starts
        # leaves no never-awaited coroutine behind; a tool call runs in the trace context of
        # the worker's span that made it (carmulti.tracing)
        ctx = _tracing.context_for(trace) if trace is not None and _tracing.ENABLED else None
        task = self.state.loop.create_task(self._serve(w, rid, make), context=ctx)  # type: ignore[union-attr]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        w.request_tasks[rid] = task
        if p.tasks is None:
            p.tasks = set()
        p.tasks.add(task)

    async def _serve(self, w: WorkerHandle, rid: int, make: Any) -> None:
        try:
            val = await make()
            ret = {"rid": rid, "ok": encode_value(val)}
        except asyncio.CancelledError:
            # Still answer (with nothing) so the worker can forget the request; a
            # reply already on its way when the cancel came is kept by the worker.
            if not w.dead and not self.state.closing:
                self._reply(w, {"rid": rid, "ok": None})
            return
        except Exception as exc:  # noqa: BLE001 - a failed tool call / mailbox op goes back to the agent
            ret = {"rid": rid, "err": encode_error(exc)}
        finally:
            w.request_tasks.pop(rid, None)
        if not w.dead:
            self._reply(w, ret)

    def _reply(self, w: WorkerHandle, ret: dict[str, Any]) -> None:
        w.replies.append(ret)
        self.transport.schedule_flush()

    def flush_replies(self, w: WorkerHandle) -> None:
        """Send ``w``'s pending replies (one frame, or frames packed by bytes)."""
        rets, w.replies = w.replies, []
        limit = self.config.max_frame_bytes
        data = one_frame({"t": "ret", "replies": rets}, limit)
        if data is not None:
            self.transport.send(w, [wire.VERSION, data])
            return
        for body in _pack_replies(rets, limit):
            self.transport.send(w, [wire.VERSION, body])

    # -- synchronous RPC (state reads, sync mailbox methods) --------------------------------------------------------
    def on_rpc(self, w: WorkerHandle, ident: bytes, body: dict[str, Any]) -> None:
        """Answer one synchronous request right away (the worker's loop waits for it)."""
        op = body["op"]
        rid = body["rid"]
        try:
            if op == "call":
                ok = self._sync_call(w, body)
            elif op == "budget":
                ok = self._budget_call(body)
            else:
                e = self.shipped.by_id.get(body["infra"])
                coordination = e.coordination() if e is not None else None
                if coordination is None:
                    raise RuntimeError(f"unknown coordination {body['infra']}")
                st = coordination.state
                if op == "get":
                    k = body["key"]
                    ok = [True, st.get(k)] if st.exists(k) else [False]
                elif op == "exists":
                    ok = st.exists(body["key"])
                else:
                    ok = list(st.keys())
            rep = {"t": "rret", "rid": rid, "ok": ok}
        except Exception as exc:  # noqa: BLE001
            rep = {"t": "rret", "rid": rid, "err": encode_error(exc)}
        try:
            data = orjson.dumps(rep)
        except TypeError as exc:
            data = orjson.dumps({"t": "rret", "rid": rid, "err": {"type": "TypeError", "msg": str(exc)}})
        limit = self.config.max_frame_bytes
        if len(data) > limit - FRAME_OVERHEAD:
            what = f"the state value for key {body['key']!r}" if op == "get" else f"the reply to {op!r}"
            data = orjson.dumps({"t": "rret", "rid": rid, "err": {"type": "ValueError", "msg": too_big(
                what, len(data), limit)}})
        self.transport.send_to_identity(ident, [wire.VERSION, data])

    def _budget_call(self, body: dict[str, Any]) -> Any:
        """A remote worker's budget call, applied to the coordination's one budget (see ``proxies.RemoteBudget``)."""
        e = self.shipped.by_id.get(body["infra"])
        coordination = e.coordination() if e is not None else None
        if coordination is None:
            raise RuntimeError(f"unknown coordination {body['infra']}")
        budget = coordination.budget
        m = body["method"]
        if m == "begin_agent":
            budget.begin_agent()
            return None
        if m == "record":
            budget.record(TokenAccounting(*body["args"][0]))
            return None
        if m == "snapshot":
            return budget.snapshot().to_dict()
        if m == "exhausted":
            return budget.exhausted
        raise RuntimeError(f"budget call {m!r} not allowed")

    def _sync_call(self, w: WorkerHandle, body: dict[str, Any]) -> Any:
        p = self.pending.get(body["job"])
        ent = self.objects.get(body["object"])
        if p is None or ent is None:
            raise RuntimeError("the agent's job is no longer running")
        obj = ent[0]
        m = body["method"]
        if (type(obj).__name__, m) not in _SYNC_METHODS:
            raise RuntimeError(f"mailbox call {m!r} not allowed on {type(obj).__name__}")
        args = [decode_value(a) for a in body["args"]]
        if m == "contains":
            return args[0] in obj
        if m == "host":  # register, the inbox hosted in the calling worker
            return self.hosts.register(obj, args[0], w)
        if m == "route":
            return self.hosts.route(obj, args[0])
        res = getattr(obj, m)(*args)
        if isinstance(res, Inbox):
            oid = self.pin(res)
            p.objects = [*(p.objects or ()), oid]
            return {"$inbox": oid, "name": res.name, "cap": res.capacity}
        return encode_value(res)


def _pack_replies(rets: list[dict[str, Any]], limit: int) -> list[bytes]:
    """Replies as frames of at most ``limit`` bytes; a reply that cannot be sent becomes an error naming why."""
    parts = []
    for r in rets:
        try:
            b = orjson.dumps(r)
        except TypeError:
            bad = find_unserializable(r.get("ok"), "$.result") or ("$.result", "not JSON-serializable")
            b = orjson.dumps({"rid": r["rid"], "err": {"type": "ToolError", "msg": f"SerializationError: the tool "
                                                       f"result cannot be sent to the worker: {bad[0]}: {bad[1]}"}})
        if len(b) > limit - FRAME_OVERHEAD:
            b = orjson.dumps({"rid": r["rid"], "err": {"type": "ValueError", "msg": too_big(
                "the reply (tool result or message)", len(b), limit)}})
        parts.append(b)
    return pack_frames(b'{"t":"ret","replies":[', b"]}", parts, limit)
