"""A worker process of the :class:`~carmulti.ProcessExecutor` (the process target is :func:`main`).

Owns the worker's side of the trip: one uvloop loop running many agents at
once, each through the shared agent run (:func:`carmulti.executors.agent_run.run_agent`)
with the worker-side proxies of :mod:`.proxies` as its environment; the sockets
to the coordinator; the buffering and byte-sized batching of results, events
and requests. The heartbeat thread is in :mod:`.heartbeat`.

Sockets (three DEALERs connected to the coordinator's ROUTER):

* the main socket (identity ``w{index}.{gen}``), driven by ``loop.add_reader``:
  job frames in, result/event/request batches out (flushed once per loop
  iteration), tool and mailbox replies in;
* the RPC socket (``.../r``), used *synchronously* for state reads (``Runtime``
  reads state synchronously) and the synchronous mailbox methods;
* the heartbeat socket (``.../h``), written by a thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import logging
import os
import signal
import threading
import time
from typing import Any

import zmq

from ... import tracing as _tracing
from ...errors import ToolError, WireProtocolError
from ...types import AgentOutput, AgentSpec, _named_spec
from ..agent_run import AgentEnvironment, exception_text, run_agent
from ..base import AgentJob, AgentRun
from ..gcpace import GcPacer
from . import wire
from .heartbeat import heartbeat, secure
from .payloads import decode_error, decode_value, encode_value, is_message, one_frame, output_to_wire, split_batch
from .peers import Peers
from .proxies import EventSink, RemoteBudget, RemoteTools, StateView, job_mailbox
from .worker_jobs import WorkerCoordination, WorkerJob

__all__ = ["main"]

log = logging.getLogger("carmulti.executors.worker")


def main(cfg: dict[str, Any]) -> None:
    """Process entry point: run the worker until the coordinator says ``stop`` or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the coordinator, which stops us
    import uvloop

    uvloop.run(WorkerProcess(cfg).main())


#: Frames read per wake-up of the main socket before the loop runs what they started. Draining without
#: bound, a worker fed a million jobs started none until the stream paused (measured: agents of a
#: 200k-job run began 1.6 s late).
READ_BURST = 16


class WorkerProcess:
    """The worker's loop: receives jobs, runs them, batches what goes back."""

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
        self.coordinations: dict[int, WorkerCoordination] = {}
        self.jobs: dict[int, WorkerJob] = {}
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.late_sinks: dict[int, Any] = {}  # rid -> RemoteInbox of a cancelled recv
        self.out_results: list[dict[str, Any]] = []
        #: Successes that travel in a batch's ``done`` columns (id, output): see ``WorkerJob.__call__``.
        self.out_done: list[tuple[int, AgentOutput]] = []
        self.out_requests: list[dict[str, Any]] = []
        self.out_events: dict[int, list[dict[str, Any]]] = {}
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.flush_scheduled = False
        self.rejected = 0
        self.next_rid = 1
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        #: The context the jobs' done callbacks run in (one for all: no context copy per agent).
        self.callback_context = contextvars.copy_context()

    # -- lifecycle --------------------------------------------------------------------------------------------------
    async def main(self) -> None:
        """Connect, say hello, serve until ``stop``; then cancel what runs and close everything."""
        loop = self.loop = asyncio.get_running_loop()
        init = self.cfg.get("initializer")
        if init is not None:  # the executor's initializer (e.g. a TracerProvider and its exporter), before any job
            import dill

            dill.loads(init)()
        _tracing.preload()
        ctx = zmq.Context()
        ident = f"w{self.index}.{self.gen}".encode()
        endpoint = self.cfg["endpoint"]
        maxmsg = self.max_frame_bytes + wire.SOCKET_SLACK  # a bigger message disconnects its sender
        sock = self.sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, ident)
        sock.setsockopt(zmq.SNDHWM, self.cfg["hwm"])
        sock.setsockopt(zmq.RCVHWM, self.cfg["hwm"])
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsg)
        curve = self.cfg.get("curve")
        secure(sock, curve)
        sock.connect(endpoint)
        rsock = self.rsock = ctx.socket(zmq.DEALER)
        rsock.setsockopt(zmq.IDENTITY, ident + b"/r")
        rsock.setsockopt(zmq.LINGER, 0)
        rsock.setsockopt(zmq.MAXMSGSIZE, maxmsg)
        secure(rsock, curve)
        rsock.connect(endpoint)
        self.peers = Peers(loop, ident.decode(), self.cfg.get("peer_dir"), self.max_frame_bytes, self._send,
                           self.rpc_call)
        await self.peers.start()
        self.stopped: asyncio.Future[None] = loop.create_future()
        beat_stop = threading.Event()
        beat = threading.Thread(target=heartbeat, args=(ctx, ident + b"/h", endpoint,
                                                         float(self.cfg["heartbeat_interval_s"]), beat_stop, curve),
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
        self._send(wire.encode({"t": "hello", "pid": os.getpid(), "index": self.index, "gen": self.gen,
                                "nonce": self.cfg["nonce"]}))
        if self.cfg.get("gc_freeze", True):
            gc.collect()
            gc.freeze()  # start-up objects (modules, classes) are never scanned again
        pacer = GcPacer()  # paced full collections instead of automatic ones (executors.gcpace)
        if gc.isenabled():  # unless the initializer disabled the collector
            pacer.start(loop)
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
            _tracing.flush()  # spans a provider still buffers (carmulti.tracing)
            for wc in self.coordinations.values():
                wc.release()
            pacer.stop()
            self.peers.shutdown()
            beat_stop.set()
            beat.join(5.0)
            sock.close(linger=0)
            rsock.close(linger=0)
            ctx.term()

    def _parent_died(self) -> None:
        log.warning("carmulti worker %d: coordinator died; exiting", os.getpid())
        os._exit(3)

    # -- receiving --------------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        sock = self.sock
        try:
            for _ in range(READ_BURST):
                if not wire.has_input(sock):
                    break
                frames = sock.recv_multipart(zmq.NOBLOCK)
                try:
                    body, blob = wire.decode(frames, wire.TO_WORKER, self.max_frame_bytes)
                except WireProtocolError as exc:
                    self._reject(frames, exc)
                    continue
                self._dispatch(body, blob)
            else:  # more may wait: read it after the agents these frames started take their first step
                self.loop.call_soon(self._on_readable)
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:  # socket closed during shutdown
            if exc.errno != zmq.ENOTSOCK:
                raise
            return
        if self.backlog:
            self._drain_backlog()

    def _reject(self, frames: list[bytes], exc: WireProtocolError) -> None:
        self.rejected += 1
        if self.rejected <= 3 or self.rejected % 1000 == 0:  # rate-limited: a flood logs a few lines
            log.warning("carmulti worker %d rejected a frame (%d so far): %s", os.getpid(), self.rejected, exc)
        nack: dict[str, Any] = {"t": "nack", "err": str(exc)}
        if len(frames) >= 2:
            jobs = [j for j in wire.salvage_ids(frames[1], "jobs", "id") if j not in self.jobs]
            if jobs:
                nack["jobs"] = jobs  # the coordinator fails exactly these
        self._send(wire.encode(nack))

    def _dispatch(self, body: dict[str, Any], blob: bytes | None) -> None:
        t = body["t"]
        if t == "fan":
            self._start_fan(body)
        elif t == "jobs":
            t0 = time.perf_counter()  # one float for the frame's jobs (24 bytes per agent in flight otherwise)
            for j in body["jobs"]:
                self._start_job(j, t0)
        elif t == "ret":
            for r in body["replies"]:
                self._on_reply(r)
        elif t == "runner" or t == "infra":
            import dill

            cid = body["id"]
            try:
                obj = dill.loads(blob)
            except Exception as exc:  # noqa: BLE001
                err = f"the {'runner' if t == 'runner' else 'infra'} could not be loaded in the worker: " \
                      f"{exception_text(exc)}"
                if t == "runner":
                    self.runner_errors[cid] = err
                else:
                    self.coordinations[cid] = WorkerCoordination(None, None, EventSink(self, cid), err)
                return
            if t == "runner":
                self.runners[cid] = obj
            else:
                budget, policies = obj
                if self.cfg.get("remote_budget"):  # the budget lives in the coordinator (another machine)
                    budget = RemoteBudget(self, cid, budget)
                self.coordinations[cid] = WorkerCoordination(budget, policies, EventSink(self, cid))
        elif t == "put":  # a put the coordinator forwards to an inbox hosted here (.peers)
            self.peers.serve_put(body, None)
        elif t == "pcancel":
            self.peers.cancel_put(None, body["rid"])
        elif t == "hclose":
            self.peers.close(body["hids"])
        elif t == "lost":
            self.peers.on_lost(body["worker"], body["reason"])
        elif t == "cancel":
            for jid in body["jobs"]:
                job = self.jobs.get(jid)
                if job is not None and job.task is not None:
                    job.task.cancel()
        elif t == "ping":
            pong: dict[str, Any] = {"t": "pong", "n": body["n"], "rejected": self.rejected}
            asked = body.get("jobs")
            if asked:
                # jobs the coordinator still waits for that this worker neither runs nor has answered:
                # lost on the way (a frame dropped). Results already finished go out first.
                self._flush()
                pong["unknown"] = [j for j in asked if j not in self.jobs]
            self._send(wire.encode(pong))
        elif t == "forget":
            for rid in body.get("runners", ()):
                self.runners.pop(rid, None)
                self.runner_errors.pop(rid, None)
            for cid in body.get("infras", ()):
                self._forget_coordination(cid)
        elif t == "stop":
            if not self.stopped.done():
                self.stopped.set_result(None)
        # "rret" on the main socket is a late RPC reply: ignored

    def _on_reply(self, r: dict[str, Any]) -> None:
        fut = self.pending.pop(r["rid"], None)
        if fut is None or fut.done():
            sink = self.late_sinks.pop(r["rid"], None)
            v = r.get("ok")
            if sink is not None and is_message(v):
                sink._late.append(decode_value(v))  # the recv was cancelled here: keep the message
            return
        if "ok" in r:
            fut.set_result(r["ok"])
        else:
            fut.set_exception(decode_error(r["err"]))

    # -- jobs -------------------------------------------------------------------------------------------------------
    def _start_fan(self, body: dict[str, Any]) -> None:
        """The jobs of a ``fan`` frame: one runner and coordination, name-only specs, defaults otherwise."""
        t0 = time.perf_counter()
        ids = body["ids"]
        rid, cid = body["runner"], body["infra"]
        runner, wc = self.runners.get(rid), self.coordinations.get(cid)
        if runner is None or wc is None or wc.error:
            err = self._missing(rid, runner, wc)
            for jid in ids:
                self._result(jid, AgentRun(None, err, 0.0), None)
            return
        desc = body.get("mailbox")
        for jid, name, task in zip(ids, body["names"], body["tasks"]):
            spec = _named_spec(name)
            self._launch(jid, spec, AgentJob(spec, task), runner, wc, cid, desc, None, t0)

    def _start_job(self, j: dict[str, Any], t0: float) -> None:
        jid = j["id"]
        wc = self.coordinations.get(j["infra"])
        runner = self.runners.get(j["runner"])
        try:
            spec = AgentSpec.from_dict(j["spec"])
        except (TypeError, ValueError) as exc:
            self._result(jid, AgentRun(None, f"invalid agent spec: {exc}", 0.0), None)
            return
        if runner is None or wc is None or wc.error:
            self._result(jid, AgentRun(None, self._missing(j["runner"], runner, wc), 0.0), None)
            return
        if len(j) == 5 or (len(j) == 6 and "mailbox" in j):  # every optional field at its default
            self._launch(jid, spec, AgentJob(spec, j["task"]), runner, wc, j["infra"], j.get("mailbox"), None, t0)
            return
        agent = AgentJob(spec, j["task"], isolated=j.get("isolated", False), tools=j.get("tools"),
                         register_spec_tools=j.get("spec_tools", True),
                         validate_job_tools=j.get("validate_tools", True))
        self._launch(jid, spec, agent, runner, wc, j["infra"], j.get("mailbox"), j, t0)

    def _missing(self, rid: int, runner: Any, wc: WorkerCoordination | None) -> str:
        """Why a job cannot start: its runner or coordination failed to load here, or never arrived."""
        return ((self.runner_errors.get(rid) if runner is None else None) or (wc.error if wc else None)
                or "internal: the worker never received this job's runner/infra")

    def _launch(self, jid: int, spec: AgentSpec, agent: AgentJob, runner: Any, wc: WorkerCoordination, cid: int,
                mailbox_desc: dict[str, Any] | None, j: dict[str, Any] | None, t0: float) -> None:
        """Start one agent as a task; ``j``: its job entry when an optional field is set (else all defaults)."""
        view = StateView(self, cid)
        job = WorkerJob(self, jid, spec, view, wc, cid, t0)
        wc.jobs += 1
        self.jobs[jid] = job
        mailbox = job_mailbox(self, jid, mailbox_desc)
        if j is None:  # keywords and .get()s cost 0.3 us a job more
            env = AgentEnvironment(view, wc.sink, wc.policies, wc.budget, None, self.grace, None, None, True)
            tools = None
        else:
            timeout_s = j.get("timeout_s")
            # bound methods only where they can be called (64 bytes each, per agent in flight)
            env = AgentEnvironment(view, wc.sink, wc.policies, wc.budget, timeout_s, self.grace,
                                   job.isolate if agent.isolated else None,
                                   None if timeout_s is None else job.abandoned,
                                   remote=True, trace_context=j.get("trace"))
            tools = RemoteTools(self, jid) if j.get("tool_executor") else None
        task = job.task = self.loop.create_task(  # named after its agent: no name str of its own (64 B per agent)
            run_agent(runner, agent, env, mailbox=mailbox, tool_executor=tools), name=spec.name)
        task.add_done_callback(job, context=self.callback_context)

    def _end(self, job: WorkerJob) -> None:
        if job.finished:
            return
        job.finished = True
        self.jobs.pop(job.id, None)
        wc = job.coordination
        wc.jobs -= 1
        if wc.forgotten and wc.jobs == 0 and self.coordinations.get(job.coordination_id) is wc:
            self._forget_coordination(job.coordination_id)

    def _forget_coordination(self, cid: int) -> None:
        wc = self.coordinations.get(cid)
        if wc is None:
            return
        if wc.jobs:
            wc.forgotten = True  # released when its last running job ends
            return
        del self.coordinations[cid]
        wc.release()

    def _result(self, jid: int, run: AgentRun, writes: list[Any] | None) -> None:
        out = run.output
        if out is not None:  # a runner-reported failure travels inside the output (its error field)
            r = wire.encode_result(jid, output_to_wire(out), None, run.duration_ms, writes)
        else:
            r = wire.encode_result(jid, None, run.error, run.duration_ms, writes)
        self.out_results.append(r)
        self.schedule_flush()

    # -- requests to the coordinator --------------------------------------------------------------------------------
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
        self.out_requests.append(body)
        self.schedule_flush()
        try:
            v = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # the reply won the race against our cancellation: keep a message it carries
                sink = self.late_sinks.pop(rid, None)
                v = fut.result()
                if sink is not None and is_message(v):
                    sink._late.append(decode_value(v))
            elif self.pending.pop(rid, None) is not None:
                # not answered yet: ask the coordinator to stop; its reply (it always sends
                # one) is routed to late_sinks by _on_reply
                self.out_requests.append({"rid": self.next_rid, "op": "cancel", "target": rid})
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
        rs.send_multipart(wire.encode(body))
        deadline = time.monotonic() + self.rpc_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not rs.poll(int(left * 1000) + 1):
                raise TimeoutError(f"the coordinator did not answer a state/mailbox request within {self.rpc_timeout}s")
            frames = rs.recv_multipart()
            try:
                rep, _ = wire.decode(frames, wire.TO_WORKER, self.max_frame_bytes)
            except WireProtocolError as exc:
                self.rejected += 1
                log.warning("carmulti worker %d rejected an RPC reply: %s", os.getpid(), exc)
                continue
            if rep["t"] == "rret" and rep["rid"] == rid:
                break
        if "ok" in rep:
            return rep["ok"]
        raise decode_error(rep["err"])

    def rpc_call(self, job: int, oid: int, method: str, args: list[Any]) -> Any:
        """Call a synchronous method of a coordinator-side mailbox object."""
        return self.rpc({"op": "call", "job": job, "object": oid, "method": method,
                         "args": [encode_value(a) for a in args]})

    # -- sending ----------------------------------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        """Send what is buffered at the end of this loop iteration."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        ev = [[i, recs] for i, recs in self.out_events.items() if recs]
        self.out_events = {}
        req, self.out_requests = self.out_requests, []
        res, self.out_results = self.out_results, []
        done, self.out_done = self.out_done, []
        bs = self.batch_size
        if ev or req or res:
            self._flush_results(ev, req, res, bs)
        for k in range(0, len(done), bs):
            chunk = done[k:k + bs]
            data = one_frame(wire.encode_done([jid for jid, _ in chunk], [o.answer for _, o in chunk],
                                              [o.duration_ms for _, o in chunk]), self.max_frame_bytes)
            if data is not None:
                self._send([wire.VERSION, data])
                continue
            # an answer JSON cannot carry (a lone surrogate), or too many bytes: the results' own way
            rs = [wire.encode_result(jid, output_to_wire(o), None, o.duration_ms, None) for jid, o in chunk]
            self._flush_results([], [], rs, bs)

    def _flush_results(self, ev: list[Any], req: list[dict[str, Any]], res: list[dict[str, Any]], bs: int) -> None:
        first = True
        for k in range(0, max(len(res), 1), bs):
            body: dict[str, Any] = {"t": "batch", "results": res[k:k + bs]}
            if first:
                if ev:
                    body["events"] = ev
                if req:
                    body["requests"] = req
                first = False
            data = one_frame(body, self.max_frame_bytes)
            if data is not None:
                self._send([wire.VERSION, data])
                continue
            for frame in self._split(body):  # rare: something orjson refused, or over the frame limit
                self._send([wire.VERSION, frame])

    def _split(self, body: dict[str, Any]) -> list[bytes]:
        return split_batch(body, self.max_frame_bytes, self._fail_request)

    def _fail_request(self, rid: int, problem: str) -> None:
        fut = self.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(ToolError(problem))

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
