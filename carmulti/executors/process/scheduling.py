"""Scheduling of the process executor: which job goes to which worker, and what comes back.

Owns every job from ``run_agent``/``run_batch`` to its :class:`~carmulti.executors.AgentRun`:
the FIFO queue, spreading jobs evenly over the ready workers
(``max_inflight_per_worker``), encoding them into byte-sized ``fan`` frames
(plain jobs, column by column) and ``jobs`` frames (an agent whose own job
cannot fit fails with the size and the limit), handling ``batch`` frames
(events into the coordination's log, requests to :mod:`.services`, results:
state writes applied to the shared store or to the agent's overlay; the
``done`` columns of common successes), deadlines (``agent_timeout_s`` + grace: ask the worker; a
result it no longer owes was lost), rejected frames (fail exactly the jobs
they carried), and what happens to the jobs of a worker that died (fail them,
at-most-once, or run idempotent ones again).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import orjson

from ... import _strings as S
from ... import tracing as _tracing
from ...errors import WireProtocolError
from ...isolation import AgentContext
from ...types import AgentOutput
from ..base import IDEMPOTENT_METADATA_KEY, AgentJob, AgentRun
from . import wire
from .payloads import (FRAME_OVERHEAD, apply_writes, find_unserializable, one_frame, output_from_wire, pack_frames,
                       too_big)

from .records import Batch, PendingJob, ProcessConfig, RunState, WorkerHandle
from .services import Services
from .shipping import ShippedCache
from .supervision import WorkerSupervisor
from .transport import Transport

if TYPE_CHECKING:
    from ..base import Coordination

__all__ = ["Scheduler"]

log = logging.getLogger("carmulti.executors.process")


#: A submission of more jobs than this queues them in waves of this many, each sent as soon as it is
#: queued, so the workers start on a big round's first agents while the coordinator queues the rest.
SUBMIT_WAVE = 4096


class Scheduler:
    """Queues, sends and settles the executor's jobs.

    Args:
        config: The executor's settings.
        state: Shared running/closing flags and the event loop.
        transport: Where frames go.
        workers: The worker supervisor (ready workers; kills).
        services: Pins mailboxes for jobs and serves their requests.
        shipped: Runners and coordinations shipped to workers.
        pending: The jobs in flight by id (shared with ``services``).
    """

    def __init__(self, config: ProcessConfig, state: RunState, transport: Transport, workers: WorkerSupervisor,
                 services: Services, shipped: ShippedCache, pending: dict[int, PendingJob]) -> None:
        self.config = config
        self.state = state
        self.transport = transport
        self.workers = workers
        self.services = services
        self.shipped = shipped
        self.pending = pending
        self.remote_budget = False  # workers on other machines: ship budget limits, serve budget calls
        self.queue: collections.deque[PendingJob] = collections.deque()
        self._next_id = 1

    # -- new jobs ---------------------------------------------------------------------------------------------------
    def submit(self, runner: Any, jobs: Sequence[AgentJob], coordination: "Coordination",
               batch: Batch | None = None, fut: "asyncio.Future[AgentRun] | None" = None) -> list[PendingJob]:
        """Queue ``jobs`` (slots ``0..n-1`` of ``batch``, or the one job settling ``fut``) and start sending them."""
        shipped = self.shipped
        rentry, centry = shipped.runner_entry(runner), shipped.coordination_entry(coordination)
        trace = _tracing.inject() if _tracing.ENABLED else None  # the caller's span: parent of the agents' spans
        ps = []
        if jobs:
            shipped.acquire(rentry, centry, len(jobs))  # each job releases its own share when it settles
        queued = 0  # ps[:queued] are in the queue
        wave = SUBMIT_WAVE
        for i, job in enumerate(jobs):
            jid = self._next_id
            self._next_id += 1
            p = PendingJob(jid, job, coordination, runner, rentry, centry)
            p.batch = batch
            p.fut = fut
            p.slot = i
            p.trace = trace
            self.pending[jid] = p
            ps.append(p)
            if i + 1 - queued == wave:  # a big submission: these leave now, the workers start on them
                self.queue.extend(ps[queued:])
                queued = i + 1
                self.pump()
                self.transport.flush_now()
        self.queue.extend(ps[queued:] if queued else ps)
        self.pump()
        return ps

    def pump(self) -> None:
        """Assign queued jobs to ready workers: evenly, at most ``max_inflight_per_worker`` each."""
        q = self.queue
        if not q or self.state.closing:
            return
        ready = self.workers.ready()
        if not ready:
            return
        cap = self.config.max_inflight_per_worker
        bs = self.config.batch_size
        share = -(-len(q) // len(ready))  # spread what is queued evenly over the ready workers
        while q:
            w = min(ready, key=lambda w: len(w.inflight))
            room = cap - len(w.inflight)
            if room <= 0:
                break
            for _ in range(min(room, bs, share, len(q))):
                p = q.popleft()
                if p.done:
                    continue
                p.worker = w
                p.unsent = True
                w.inflight[p.id] = p
                w.outbox.append(p)
        self.transport.schedule_flush()

    # -- sending ----------------------------------------------------------------------------------------------------
    def flush_jobs(self, w: WorkerHandle) -> None:
        """Encode ``w``'s assigned jobs and send them (set-up frames first), in frames sized by bytes.

        Runs of jobs that :func:`~.wire.fan_ready` admits (same runner, coordination and mailbox, no
        timeout, no trace context) go column by column in ``fan`` frames; the others, and a run whose
        frame orjson refuses or that exceeds ``max_frame_bytes``, in ``jobs`` frames.
        """
        send = self.transport.send
        ps, w.outbox = w.outbox, []
        segments = self._encode(w, ps)
        for f in w.setup:
            send(w, f)
        w.setup.clear()
        bs = self.config.batch_size
        limit = self.config.max_frame_bytes
        for seg in segments:
            items = seg.items
            for k in range(0, len(items), bs):
                chunk = items[k:k + bs]
                if seg.fan:
                    data = one_frame(wire.encode_fan(seg.runner, seg.infra, [p.id for p in chunk],
                                                     [p.job.spec.name for p in chunk], [p.job.task for p in chunk],
                                                     seg.mailbox), limit)
                    if data is not None:
                        send(w, [wire.VERSION, data])
                        continue
                    chunk = [wire.encode_job(p.id, seg.runner, seg.infra, p.job, None, seg.mailbox) for p in chunk]
                self._send_jobs(w, chunk, limit)
        grace = self.config.cancel_grace_s
        loop = self.state.loop
        for seg in segments:
            if seg.fan:
                continue  # no timeout
            for d in seg.items:
                to = d.get("timeout_s")
                if to is not None:
                    p = self.pending.get(d["id"])
                    if p is not None and p.deadline is None:
                        p.deadline = loop.call_later(to + grace + 0.1, self._deadline, p)  # type: ignore[union-attr]

    def _send_jobs(self, w: WorkerHandle, chunk: list[dict[str, Any]], limit: int) -> None:
        """Jobs as ``jobs`` frames: one frame when it fits, else job by job (a job that cannot go fails)."""
        send = self.transport.send
        data = one_frame({"t": "jobs", "jobs": chunk}, limit)
        if data is not None:
            send(w, [wire.VERSION, data])
            return
        # rare: a job orjson refused, or more bytes than one frame takes: job by job
        parts = []
        for d in chunk:
            problem = None
            try:
                b = orjson.dumps(d)
                if len(b) > limit - FRAME_OVERHEAD:
                    task_bytes = len(d["task"].encode("utf-8", "surrogatepass"))
                    problem = too_big(f"the job of agent '{d['spec']['name']}' (task of {task_bytes} bytes)",
                                      len(b), limit)
            except TypeError:
                bad = find_unserializable(d, "$") or ("$", "not JSON-serializable")
                problem = f"{bad[0]}: {bad[1]}"
            if problem is None:
                parts.append(b)
                continue
            self._fail_unsent(w, d["id"], problem)
        for body in pack_frames(b'{"t":"jobs","jobs":[', b"]}", parts, limit):
            send(w, [wire.VERSION, body])

    def _encode(self, w: WorkerHandle, ps: list[PendingJob]) -> list["_Segment"]:
        """Encode jobs for ``w`` into segments (see :class:`_Segment`), queuing the runner/coordination frames
        it has not had yet."""
        segments: list[_Segment] = []
        seg: _Segment | None = None
        now = time.monotonic()
        last_runner: Any = None
        last_coord: Any = None
        last_mb: Any = None
        mbdesc: dict[str, Any] | None = None
        oids: list[int] = []
        to: float | None = None
        limit = self.config.max_frame_bytes
        fan_ready = wire.fan_ready
        for p in ps:
            if p.done:
                continue
            job = p.job
            try:
                if p.runner_entry is not last_runner:
                    e = last_runner = p.runner_entry
                    if e.cid not in w.runners:
                        w.setup.append(wire.encode({"t": "runner", "id": e.cid}, e.pickle(limit)))
                        w.runners.add(e.cid)
                if p.coordination_entry is not last_coord:
                    e = last_coord = p.coordination_entry
                    if e.cid not in w.infras:
                        w.setup.append(wire.encode({"t": "infra", "id": e.cid},
                                                   e.pickle(limit, remote_budget=self.remote_budget)))
                        w.infras.add(e.cid)
                    to = p.coordination.agent_timeout_s
                mb = job.mailbox
                if mb is None:
                    pass
                elif mb is last_mb:
                    for oid in oids:
                        self.services.objects[oid][1] += 1
                else:
                    mbdesc, oids = self.services.mailbox_descriptor(mb)
                    last_mb = mb
                if mb is not None:
                    p.objects = oids
                desc = mbdesc if mb is not None else None
                rc, ic = p.runner_entry.cid, p.coordination_entry.cid
                if to is None and p.trace is None and fan_ready(job):
                    if seg is None or not seg.fan or seg.runner != rc or seg.infra != ic or seg.mailbox is not desc:
                        seg = _Segment(True, rc, ic, desc)
                        segments.append(seg)
                    seg.items.append(p)
                else:
                    d = wire.encode_job(p.id, rc, ic, job, to, desc, p.trace)
                    if seg is None or seg.fan:
                        seg = _Segment(False, rc, ic, None)
                        segments.append(seg)
                    seg.items.append(d)
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable runner or a foreign mailbox
                w.inflight.pop(p.id, None)
                self.resolve(p, AgentRun(None, f"could not send agent '{job.spec.name}' to a worker: "
                                               f"{type(exc).__name__}: {exc}", 0.0))
                continue
            p.unsent = False
            p.sent_at = now
        return segments

    def _fail_unsent(self, w: WorkerHandle, jid: int, problem: str) -> None:
        p = self.pending.get(jid)
        if p is not None:
            w.inflight.pop(p.id, None)
            self.resolve(p, AgentRun(None, f"could not send agent '{p.job.spec.name}' to a worker: {problem}", 0.0))

    # -- receiving --------------------------------------------------------------------------------------------------
    def on_batch(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        """Events (into the coordination's log), then requests, then results, in that order."""
        ev = body.get("events")
        if ev:
            by_id = self.shipped.by_id
            for cid, recs in ev:
                e = by_id.get(cid)
                coordination = e.coordination() if e is not None else None
                if coordination is None:
                    continue
                try:
                    coordination.log.append_batch(recs)
                except (TypeError, ValueError) as exc:
                    self.transport.reject(w, f"events from worker {w.pid} rejected: {exc}")
        req = body.get("requests")
        if req:
            for q in req:
                self.services.on_request(w, q)
        res = body.get("results")
        if res:
            pending = self.pending
            inflight = w.inflight
            for r in res:
                p = pending.get(r["id"])
                if p is None or p.worker is not w:
                    continue
                inflight.pop(p.id, None)
                self._on_result(p, r)
        done = body.get("done")
        if done:
            pending = self.pending
            inflight = w.inflight
            resolve = self.resolve
            for jid, answer, dur in zip(done["ids"], done["answers"], done["durations"]):
                p = pending.get(jid)
                if p is None or p.worker is not w:
                    continue
                inflight.pop(jid, None)
                job = p.job
                name = job.spec.name
                ctx = AgentContext(name, p.coordination.state) if job.isolated else None  # no writes to apply
                run = AgentRun(AgentOutput(name, answer, 1, 0, dur, None, None, None, []), None, dur, ctx)
                if job.capture_writes:
                    run.writes = []
                resolve(p, run)

    def _on_result(self, p: PendingJob, r: dict[str, Any]) -> None:
        state = p.coordination.state
        writes = r.get("writes")
        ctx = None
        err = r["error"]
        try:
            if p.job.isolated:  # the writes become the agent's overlay, merged by the pattern on success
                ctx = AgentContext(p.job.spec.name, state)
                if writes:
                    apply_writes(ctx.local_state, writes)
            elif writes:  # a shared agent's writes reach the store when its result arrives
                apply_writes(state, writes)
        except Exception as exc:  # noqa: BLE001
            err = err or f"could not apply the agent's state writes: {type(exc).__name__}: {exc}"
        out = r.get("output")
        if err is None and out is not None:
            output = output_from_wire(out)
            run = AgentRun(output, output.error, r["duration_ms"], ctx)  # error: reported by the runner
            if p.job.capture_writes:
                run.writes = writes or []
            self.resolve(p, run)
        else:
            self.resolve(p, AgentRun(None, err or S.MISSING_RESULT, r["duration_ms"], ctx))

    def on_rejected(self, w: WorkerHandle, frames: list[bytes], exc: WireProtocolError) -> None:
        """A frame from ``w`` failed validation: fail the jobs and requests it carried; audit the rest."""
        raw = frames[1] if len(frames) >= 2 else b""
        detail = f"the coordinator rejected a result frame from worker {w.pid}: {exc.path}: {exc.msg}"
        for jid in wire.salvage_ids(raw, "results", "id"):
            p = w.inflight.pop(jid, None)
            if p is not None and not p.done:
                self.resolve(p, AgentRun(None, detail, (time.monotonic() - p.sent_at) * 1000.0))
        for rid in wire.salvage_ids(raw, "requests", "rid"):
            w.replies.append({"rid": rid, "err": {"type": "RuntimeError", "msg": f"request rejected: {exc}"}})
        self.audit(w)

    def on_nack(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        """``w`` rejected one of our frames: fail the jobs it says the frame carried."""
        for jid in body.get("jobs") or ():
            p = w.inflight.pop(jid, None)
            if p is not None and not p.done:
                self.resolve(p, AgentRun(None, f"worker {w.pid} rejected this agent's job: {body['err']}",
                                         (time.monotonic() - p.sent_at) * 1000.0))

    def on_stuck(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        """A runner in ``w`` ignored its timeout's cancellation: kill ``w`` (its other agents are lost)."""
        p = self.pending.get(body["job"])
        name = p.job.spec.name if p is not None else f"job {body['job']}"
        w.stuck_job = body["job"]
        to = p.coordination.agent_timeout_s if p is not None else None
        self.workers.kill(w, f"agent '{name}' ignored cancellation for {self.config.cancel_grace_s}s after its "
                             f"{to}s timeout")

    # -- deadlines and lost results ---------------------------------------------------------------------------------
    def _deadline(self, p: PendingJob) -> None:
        """A job is past timeout + grace: ask its worker about it; a silent loop gets the worker killed.

        The pong says whether the worker still runs the job (it enforces the
        timeout itself: re-arm) or no longer knows it (its result was lost on
        the way: the job fails now, see :meth:`on_pong`).
        """
        p.deadline = None
        w = p.worker
        if p.done or w is None or w.dead:
            return
        w.ping_n += 1
        n = w.ping_n
        self.transport.send(w, wire.encode({"t": "ping", "n": n, "jobs": [p.id]}))
        probe = max(0.25, min(self.config.cancel_grace_s, 2.0))
        p.deadline = self.state.loop.call_later(probe, self._probe_check, p, w, n)  # type: ignore[union-attr]

    def _probe_check(self, p: PendingJob, w: WorkerHandle, n: int) -> None:
        p.deadline = None
        if p.done or w.dead:
            return
        to = p.coordination.agent_timeout_s
        grace = self.config.cancel_grace_s
        if w.pong_n >= n:  # the loop is alive and still runs the job (started late): check again later
            p.deadline = self.state.loop.call_later((to or 0.0) + grace + 0.1,  # type: ignore[union-attr]
                                                    self._deadline, p)
            return
        w.stuck_job = p.id
        self.workers.kill(w, f"agent '{p.job.spec.name}' blocked its event loop past its {to}s timeout and "
                             f"{grace}s grace")

    def audit(self, w: WorkerHandle, jobs: list[int] | None = None) -> None:
        """Ask ``w`` which of ``jobs`` (default: all it holds) it still runs or owes; the rest were lost."""
        if w.dead or not w.ready:
            return
        ids = [p.id for p in w.inflight.values() if not p.unsent] if jobs is None else jobs
        if not ids:
            return
        w.ping_n += 1
        self.transport.send(w, wire.encode({"t": "ping", "n": w.ping_n, "jobs": ids}))

    def on_pong(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        """A pong: the worker's loop is alive; jobs it says it does not know were lost on the way."""
        w.pong_n = max(w.pong_n, body["n"])
        w.rejected = body["rejected"]
        now = time.monotonic()
        for jid in body.get("unknown") or ():
            p = w.inflight.pop(jid, None)
            if p is not None and not p.done and not p.unsent:
                self.resolve(p, AgentRun(None, f"the result of this agent was lost on its way from worker {w.pid}",
                                         (now - p.sent_at) * 1000.0))

    # -- dead workers -----------------------------------------------------------------------------------------------
    def on_worker_lost(self, w: WorkerHandle, reason: str) -> None:
        """``w`` died: unsent jobs go back to the queue; idempotent ones run again (bounded); the rest fail.

        Every job past its timeout reports ``timeout after {n}s`` (the API's text
        for an agent that timed out, however it ended); the others say plainly
        what happened to their worker.
        """
        now = time.monotonic()
        for p in list(w.inflight.values()):
            if p.done:
                continue
            if p.unsent:
                p.worker = None
                self.queue.appendleft(p)  # never reached the worker: safe to run elsewhere
                continue
            to = p.coordination.agent_timeout_s
            if p.id == w.stuck_job or (w.kill_reason is not None and to is not None and now - p.sent_at >= to):
                err = S.TIMEOUT.format(timeout=to)
            elif (p.attempts <= self.config.idempotent_retries and not self.state.closing
                  and p.job.spec.metadata.get(IDEMPOTENT_METADATA_KEY) is True):
                self._requeue_lost(p, reason)  # at-least-once, for agents declared idempotent
                continue
            else:
                if w.kill_reason is not None:
                    err = f"{reason}; this agent was on that worker and was lost with it"
                else:
                    err = f"{reason} while running this agent"
                if p.attempts > 1:
                    err += f" (attempt {p.attempts}; idempotent retries exhausted)"
            self.resolve(p, AgentRun(None, err, (now - p.sent_at) * 1000.0))
        w.inflight.clear()
        w.outbox.clear()

    def _requeue_lost(self, p: PendingJob, reason: str) -> None:
        """Run a job lost with its worker again, elsewhere (idempotent agents only).

        Its results never reached the coordinator, so none of its state writes
        were applied; events it sent before the crash stay in the log.
        """
        log.warning("ProcessExecutor: re-running idempotent agent %r (attempt %d) after: %s",
                    p.job.spec.name, p.attempts + 1, reason)
        self._drop_attempt(p)
        p.attempts += 1
        p.worker = None
        p.unsent = True
        self.queue.appendleft(p)

    # -- settling ---------------------------------------------------------------------------------------------------
    def resolve(self, p: PendingJob, run: AgentRun | None, exc: BaseException | None = None) -> None:
        """Settle ``p`` with ``run`` (or fail its caller with ``exc``); release what it held."""
        if p.done:
            return
        p.done = True
        self.pending.pop(p.id, None)
        self.shipped.release(p.runner_entry, p.coordination_entry)
        self._drop_attempt(p)
        b = p.batch
        if b is not None:
            if b.fut.done():
                return
            if exc is not None:
                b.fut.set_exception(exc)
                return
            b.runs[p.slot] = run
            b.left -= 1
            if b.left == 0:
                b.fut.set_result(b.runs)  # type: ignore[arg-type]
        elif p.fut is not None and not p.fut.done():
            if exc is not None:
                p.fut.set_exception(exc)
            else:
                p.fut.set_result(run)  # type: ignore[arg-type]

    def _drop_attempt(self, p: PendingJob) -> None:
        """Release what one attempt of ``p`` holds: its deadline, the requests served for it, pinned mailboxes."""
        if p.deadline is not None:
            p.deadline.cancel()
            p.deadline = None
        if p.tasks:
            for t in p.tasks:
                t.cancel()
            p.tasks = None
        if p.objects:
            for oid in p.objects:
                self.services.unpin(oid)
            p.objects = None

    def cancel(self, p: PendingJob) -> None:
        """The caller cancelled: forget the job, and cancel it in its worker if it was sent."""
        if p.done:
            return
        w = p.worker
        if w is not None:
            w.inflight.pop(p.id, None)
            if not p.unsent and not w.dead:
                w.cancels.append(p.id)
                self.transport.schedule_flush()
        p.batch = None
        p.fut = None
        self.resolve(p, None)

    def fail_all(self, exc: BaseException | None, error: str | None = None) -> None:
        """Settle every job: with ``exc`` raised to its caller, or with an ``error`` run."""
        for p in list(self.pending.values()):
            self.resolve(p, None if error is None else AgentRun(None, error, 0.0), exc)
        self.queue.clear()


class _Segment:
    """Consecutive jobs for one worker that travel alike: ``fan`` (their :class:`PendingJob` s, one runner,
    coordination and mailbox descriptor, sent as ``fan`` frames) or not (their ``jobs`` entries)."""

    __slots__ = ("fan", "runner", "infra", "mailbox", "items")

    def __init__(self, fan: bool, runner: int, infra: int, mailbox: dict[str, Any] | None) -> None:
        self.fan = fan
        self.runner = runner
        self.infra = infra
        self.mailbox = mailbox
        self.items: list[Any] = []
