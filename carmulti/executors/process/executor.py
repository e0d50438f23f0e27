"""The process executor's facade: :class:`ProcessExecutor`, its transport and its life cycle.

Agents run in a pool of worker processes connected to this (coordinator)
process by ZeroMQ (see README.md, section "Where agents run"). This module
owns the public class (arguments, ``start``/``aclose``, ``run_agent``/
``run_batch``), wires its parts together, and dispatches each received frame
to the part that owns it:

* :mod:`.transport` -- the coordinator's ZeroMQ ROUTER: sending, receiving, flushing, rejects;
* :mod:`.supervision` -- worker processes: spawn, hello, heartbeats, death, restarts, exit;
* :mod:`.scheduling` -- jobs: queue, spreading, byte-sized job frames, results, deadlines;
* :mod:`.services` -- what agents call back for: state reads, tools, mailboxes;
* :mod:`.shipping` -- runners and coordinations shipped once per worker, and evicted;
* :mod:`.records` -- the settings and the records of workers and jobs the parts share;
* :mod:`.wire` / :mod:`.payloads` -- the frame format; :mod:`.worker` / :mod:`.proxies` -- the worker side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ... import _validate as V
from ...errors import WireProtocolError
from ..base import AgentJob, AgentRun, Coordination
from ..gcpace import paced
from . import wire
from .records import Batch, PendingJob, ProcessConfig, RunState, WorkerHandle
from .scheduling import Scheduler
from .services import Services
from .shipping import ShippedCache, dumps
from .launching import Launcher, MultiprocessLauncher
from .supervision import WorkerSupervisor
from .transport import Transport, sweep_stale_dirs

if TYPE_CHECKING:
    from ...runner import AgentRunner

__all__ = ["ProcessExecutor"]


def _seconds(value: Any, what: str) -> float:
    return float(V.seconds(value, what))


def _pickle_initializer(fn: Callable[[], object]) -> bytes:
    try:
        return dumps(fn)
    except Exception as exc:  # noqa: BLE001 - dill raises many types; say what could not travel
        raise TypeError(f"ProcessExecutor initializer cannot be shipped to workers: {type(exc).__name__}: {exc}") \
            from exc

log = logging.getLogger("carmulti.executors.process")


class ProcessExecutor:
    """Runs agents in ``workers`` processes connected to this (coordinator) process by ZeroMQ.

    Starts lazily on first use, or explicitly with :meth:`start` / ``async
    with``; :meth:`aclose` stops everything. After close no child process,
    zombie, socket, ``ipc://`` file or shared-memory segment remains; the
    executor can be started again afterwards. Bound to the event loop it was
    started on.

    Args:
        workers: Worker processes (>= 1); default ``os.cpu_count()``.
        start_method: ``"spawn"`` (default) or ``"forkserver"``. ``"fork"`` is
            refused: forking a process that runs threads (zmq's I/O thread,
            uvloop) is unsafe.
        max_restarts: Worker restarts allowed within ``restart_period_s`` (OTP
            restart intensity); one more stops the pool with
            :class:`~carmulti.WorkerPoolGaveUp`.
        restart_period_s: The restart-intensity window, in seconds.
        cancel_grace_s: After an agent's timeout (``SharedInfra.agent_timeout_s``),
            how long its runner may take to honour the cancellation, in
            seconds; a runner still running then (or whose worker's loop is
            blocked) is SIGKILLed with its worker, and the worker replaced.
        batch_size: Most jobs (coordinator → worker) or results (worker →
            coordinator) per frame.
        max_inflight_per_worker: Most jobs sent to one worker and not yet
            finished; further jobs wait in the coordinator (FIFO). Jobs waiting
            on each other (e.g. a delegating agent and its specialists) need
            this above their count.
        hwm: ZeroMQ send/receive high-water mark per socket, in messages
            (frames of up to ``batch_size`` jobs). At the mark a send is queued
            in the sender and retried; never dropped.
        startup_timeout_s: How long :meth:`start` waits for every worker's
            hello, in seconds.
        shutdown_timeout_s: How long :meth:`aclose` waits for workers to exit
            after ``stop`` before SIGKILLing them, in seconds.
        rpc_timeout_s: How long a worker waits for a synchronous state or
            mailbox reply before failing that call with ``TimeoutError``.
        max_frame_bytes: Largest frame body accepted, in bytes.
        gc_freeze: Freeze start-up objects in workers (``gc.freeze``) so the
            cyclic GC does not rescan them on every collection. Either way a
            worker paces its collector (:mod:`carmulti.executors.gcpace`): full
            collections on a timer, at most 5% of its time, instead of the
            automatic ones that rescan every agent in flight (unless the
            ``initializer`` disabled the collector).
        heartbeat_timeout_s: A worker process that sends no heartbeat for this
            long, in seconds (stopped with SIGSTOP, wedged in C code holding the
            GIL), is SIGKILLed and replaced; its agents fail with an error naming
            the worker and the silence (idempotent agents run again), whether or
            not ``agent_timeout_s`` is set. Heartbeats come from a thread of the
            worker every ``heartbeat_timeout_s / 5`` seconds, so a runner busy
            in Python code does not count as silent.
        idempotent_retries: How many times an agent whose spec says
            ``metadata={"idempotent": True}`` is re-run on another worker after
            its worker died under it (at-least-once for such agents; every other
            agent is at-most-once and gets an error output naming the worker's
            pid and signal). Exceptions and timeouts are never retried.
        initializer: A callable run with no arguments once in every worker
            process (restarted ones too) before it connects and serves a job:
            to install what a worker needs that the coordinator cannot give it,
            e.g. an OpenTelemetry ``TracerProvider`` and its exporter
            (:mod:`carmulti.tracing`), or logging. Shipped with dill like a
            runner. If it raises, the worker exits (at start: :meth:`start`
            raises).

    Raises:
        ValueError: a bad argument (``workers < 1``, ``start_method="fork"`` or
            unknown, a non-positive timeout or size).
        TypeError: ``initializer`` is not callable or cannot be pickled.

    Attributes:
        config: The settings (:class:`~carmulti.executors.process.records.ProcessConfig`);
            each also reads as an attribute (``executor.batch_size``).
        rejected_frames: Frames the coordinator rejected as malformed
            (:class:`~carmulti.WireProtocolError`, logged), for monitoring.
        restarts: Worker restarts so far.

    Usage::

        async with SharedInfra(executor=ProcessExecutor(workers=4)) as infra:
            result = await Swarm(agents).run(task, runner, infra)
    """

    # Made by _reset(), which reads the previous ones' counters first (absent before the first call).
    _transport: Transport
    _workers: WorkerSupervisor

    def __init__(self, workers: int | None = None, *, start_method: str = "spawn", max_restarts: int = 5,
                 restart_period_s: float = 10.0, cancel_grace_s: float = 1.0, batch_size: int = 512,
                 max_inflight_per_worker: int = 8192, hwm: int = 10_000, startup_timeout_s: float = 60.0,
                 shutdown_timeout_s: float = 2.0, rpc_timeout_s: float = 60.0,
                 max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES, gc_freeze: bool = True,
                 idempotent_retries: int = 2, heartbeat_timeout_s: float = 10.0,
                 initializer: Callable[[], object] | None = None) -> None:
        if start_method == "fork":
            raise ValueError("ProcessExecutor start_method='fork' is not supported: forking a process that runs "
                             "threads (zmq, uvloop) is unsafe; use 'spawn' (default) or 'forkserver'")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"ProcessExecutor start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        what = "ProcessExecutor "
        self.config = ProcessConfig(
            workers=V.int_at_least(os.cpu_count() or 1 if workers is None else workers, 1, what + "workers"),
            start_method=start_method,
            max_restarts=V.int_at_least(max_restarts, 0, what + "max_restarts"),
            restart_period_s=_seconds(restart_period_s, what + "restart_period_s"),
            cancel_grace_s=_seconds(cancel_grace_s, what + "cancel_grace_s"),
            batch_size=V.int_at_least(batch_size, 1, what + "batch_size"),
            max_inflight_per_worker=V.int_at_least(max_inflight_per_worker, 1, what + "max_inflight_per_worker"),
            hwm=V.int_at_least(hwm, 1, what + "hwm"),
            startup_timeout_s=_seconds(startup_timeout_s, what + "startup_timeout_s"),
            shutdown_timeout_s=_seconds(shutdown_timeout_s, what + "shutdown_timeout_s"),
            rpc_timeout_s=_seconds(rpc_timeout_s, what + "rpc_timeout_s"),
            max_frame_bytes=V.int_at_least(max_frame_bytes, 1, what + "max_frame_bytes"),
            gc_freeze=bool(gc_freeze),
            idempotent_retries=V.int_at_least(idempotent_retries, 0, what + "idempotent_retries"),
            heartbeat_timeout_s=_seconds(heartbeat_timeout_s, what + "heartbeat_timeout_s"),
        )
        if initializer is not None and not callable(initializer):
            raise TypeError(f"ProcessExecutor initializer must be callable, got {type(initializer).__name__}")
        self.initializer = initializer
        self._initializer_blob = None if initializer is None else _pickle_initializer(initializer)
        self.workers = self.config.workers
        self.start_method = start_method
        self._rejected_before = 0
        self._restarts_before = 0
        self._starting: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        """Fresh parts (the executor can start again after :meth:`aclose`)."""
        c = self.config
        if getattr(self, "_transport", None) is not None:
            self._rejected_before += self._transport.rejected_frames
            self._restarts_before += self._workers.restarts
        self._state = state = RunState()
        self._pending: dict[int, PendingJob] = {}
        self._shipped = ShippedCache()
        self._transport = transport = self._transport_type(c, state, lookup=self._lookup, dispatch=self._on_frames,
                                                           flush=self._flush, after_results=self._after_results)
        options = self._worker_options()
        if self._initializer_blob is not None:
            options["initializer"] = self._initializer_blob
        self._workers = WorkerSupervisor(c, state, transport, self._launcher(), self, on_ready=self._after_results,
                                         on_lost=self._on_worker_lost, on_give_up=self._on_give_up,
                                         worker_options=options)
        self._services = Services(c, state, transport, self._shipped, self._pending)
        self._jobs = Scheduler(c, state, transport, self._workers, self._services, self._shipped, self._pending)

    #: The coordinator's socket (``ipc://`` here; ``RayExecutor``: TCP).
    _transport_type: type[Transport] = Transport

    def _launcher(self) -> Launcher:
        """Who starts the workers (a subclass runs them elsewhere: see ``RayExecutor``)."""
        return MultiprocessLauncher(self.config.start_method)

    def _worker_options(self) -> dict[str, Any]:
        """Extra settings every worker gets (none here; ``RayExecutor``: where budgets live)."""
        return {}

    # -- wiring -----------------------------------------------------------------------------------------------------
    def _lookup(self, ident: bytes) -> WorkerHandle | None:
        return self._workers.by_ident.get(ident)

    def _after_results(self) -> None:
        self._jobs.pump()

    def _on_worker_lost(self, w: WorkerHandle, reason: str) -> None:
        self._jobs.on_worker_lost(w, reason)
        self._services.hosts.on_worker_lost(w, reason, () if self._state.closing else self._workers.slots)

    def _on_give_up(self, err: BaseException) -> None:
        self._jobs.fail_all(err)

    # -- introspection ----------------------------------------------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        """Pids of the live worker processes (in worker-slot order)."""
        return self._workers.pids

    @property
    def running(self) -> bool:
        """Whether the workers are started and the executor is not closed."""
        return self._state.running

    @property
    def endpoint(self) -> str | None:
        """The coordinator's ``ipc://`` endpoint while running."""
        return self._transport.endpoint

    @property
    def rejected_frames(self) -> int:
        """Frames the coordinator rejected as malformed (logged, rate-limited), since creation."""
        return self._rejected_before + self._transport.rejected_frames

    @property
    def restarts(self) -> int:
        """Worker restarts so far, since creation."""
        return self._restarts_before + self._workers.restarts

    def cached_counts(self) -> dict[str, int]:
        """How many runners and coordinations this executor keeps shipped to its workers (monitoring).

        Returns:
            ``{"runners": n, "infras": m}``: those used by jobs in flight plus at
            most 8 idle ones of each (older idle ones are evicted, in workers too).
        """
        return self._shipped.counts()

    def __getattr__(self, name: str) -> Any:
        # the settings read as attributes: ex.batch_size, ex.heartbeat_timeout_s, ...
        config = self.__dict__.get("config")
        if config is not None and name in ProcessConfig.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"'ProcessExecutor' object has no attribute {name!r}")

    @property
    def label(self) -> str:
        """How warnings name this executor: ``ProcessExecutor(workers=2)``."""
        return f"{type(self).__name__}(workers={self.workers})"

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} workers={self.workers} start_method={self.start_method!r} "
                f"running={self.running} pids={self.pids}>")

    # -- lifecycle --------------------------------------------------------------------------------------------------
    async def __aenter__(self) -> "ProcessExecutor":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the workers and wait until each has connected. Idempotent.

        Raises:
            RuntimeError: a worker died before connecting, or not every worker
                connected within ``startup_timeout_s`` (everything started is
                stopped again).
        """
        if self._state.running:
            return
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        loop = asyncio.get_running_loop()
        self._starting = loop.create_future()
        try:
            self._state.loop = loop
            sweep_stale_dirs()
            self._transport.open()
            await self._workers.start()
        except BaseException as exc:
            self._starting.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            self._starting.exception()  # retrieved
            self._starting = None
            await self._teardown()
            self._reset()
            raise
        self._state.running = True
        self._starting.set_result(None)
        self._starting = None

    async def aclose(self) -> None:
        """Stop every worker and release sockets, files and helper processes. Idempotent.

        Jobs still running get error outputs (``executor closed``). Workers get
        ``stop`` and ``shutdown_timeout_s`` to exit, then SIGKILL; every wait is bounded.
        """
        if self._starting is not None:
            try:
                await asyncio.shield(self._starting)
            except Exception:  # noqa: BLE001 - start failed and cleaned up
                return
        if not self._state.running:
            return
        self._state.closing = True
        self._jobs.fail_all(None, "executor closed while this agent was running")
        self._services.hosts.detach_all()
        await self._workers.stop()
        await self._teardown()
        self._reset()

    async def _teardown(self) -> None:
        self._state.closing = True
        self._workers.kill_all()
        tasks = [t for t in self._services.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._transport.close()
        self._workers.forget_owner()

    def _kill_now(self) -> None:
        """Synchronous last-resort cleanup (interpreter exit)."""
        self._workers.kill_now()
        self._transport.close_now()
        self._state.running = False

    # -- the executor protocol --------------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._workers.gave_up is not None:
            raise self._workers.gave_up
        if self._state.closing:
            raise RuntimeError("ProcessExecutor is closing")

    async def run_agent(self, runner: "AgentRunner", job: AgentJob, coordination: Coordination) -> AgentRun:
        """Run one agent on a worker; never raises for agent failures (see ``executors.base``).

        Raises:
            WorkerPoolGaveUp: the pool stopped after too many worker restarts.
            RuntimeError: the executor could not start, or is closing.
            asyncio.CancelledError: the caller cancelled (the agent is cancelled in its worker).
        """
        if not self._state.running:
            await self.start()
        self._check_usable()
        fut: asyncio.Future[AgentRun] = self._state.loop.create_future()  # type: ignore[union-attr]
        (p,) = self._jobs.submit(runner, [job], coordination, fut=fut)
        try:
            return await fut
        except asyncio.CancelledError:
            self._jobs.cancel(p)
            raise

    async def run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob],
                        coordination: Coordination) -> list[AgentRun]:
        """Run ``jobs`` concurrently across the workers; results in job order.

        Raises:
            WorkerPoolGaveUp: the pool stopped after too many worker restarts.
            RuntimeError: the executor could not start, or is closing.
        """
        if not jobs:
            return []
        if not self._state.running:
            await self.start()
        self._check_usable()
        with paced(len(jobs)):
            fut: asyncio.Future[list[AgentRun]] = self._state.loop.create_future()  # type: ignore[union-attr]
            ps = self._jobs.submit(runner, jobs, coordination, Batch(len(jobs), fut))
            try:
                return await fut
            except asyncio.CancelledError:
                for p in ps:
                    self._jobs.cancel(p)
                raise

    # -- what goes out, once per loop iteration ---------------------------------------------------------------------
    def _flush(self) -> None:
        """Forget evicted runners/coordinations, then per worker: jobs, replies, cancels."""
        send = self._transport.send
        runners, coordinations = self._shipped.evict()
        for w in self._workers.slots:
            if w is None or w.dead:
                continue
            fr = [c for c in runners if c in w.runners]
            fi = [c for c in coordinations if c in w.infras]
            if fr or fi:
                w.runners.difference_update(fr)
                w.infras.difference_update(fi)
                send(w, wire.encode({"t": "forget", "runners": fr, "infras": fi}))
            if w.outbox:
                self._jobs.flush_jobs(w)
            if w.replies:
                self._services.flush_replies(w)
            if w.cancels:
                c, w.cancels = w.cancels, []
                send(w, wire.encode({"t": "cancel", "jobs": c}))

    # -- what comes in ----------------------------------------------------------------------------------------------
    def _on_frames(self, w: WorkerHandle, frames: list[bytes], ident: bytes | None = None) -> bool:
        """Dispatch one message from worker ``w`` (identity stripped); True if it carried results.

        A message that fails validation is counted and logged (rate-limited);
        the jobs and requests it carried, as far as they can be read, fail with
        the reason, and the worker is asked which of its other jobs it still owes.
        """
        try:
            body, _ = wire.decode(frames, wire.TO_COORDINATOR, self.config.max_frame_bytes)
        except WireProtocolError as exc:
            self._transport.reject(w, str(exc))
            self._jobs.on_rejected(w, frames, exc)
            return False
        t = body["t"]
        if t == "batch":
            self._on_batch(w, body)
            return True
        if t == "rpc":
            self._services.on_rpc(w, ident if ident is not None else w.ident + b"/r", body)
        elif t == "putr":
            self._services.hosts.on_answer(body)
        elif t == "pong":
            self._jobs.on_pong(w, body)
        elif t == "hello":
            self._workers.on_hello(w, body)
        elif t == "stuck":
            self._jobs.on_stuck(w, body)
        elif t == "nack":
            self._transport.reject(None, f"worker {w.pid} rejected a frame: {body['err']}", count=False)
            self._jobs.on_nack(w, body)
        return False  # "hb": last_seen is all it carries

    def _on_batch(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        self._jobs.on_batch(w, body)

    # -- test / diagnostics hooks -----------------------------------------------------------------------------------
    def _send_raw(self, index: int, frames: list[bytes]) -> None:
        """Send raw frames to worker ``index`` (tests inject malformed frames with this)."""
        w = self._workers.slots[index]
        if w is None or w.dead:
            raise RuntimeError(f"worker {index} is not running")
        self._transport.send(w, frames)

    async def _ping(self, index: int, timeout_s: float = 5.0) -> int:
        """Ping worker ``index``; returns how many frames it has rejected so far.

        Raises:
            TimeoutError: no pong within ``timeout_s``.
        """
        w = self._workers.slots[index]
        if w is None or w.dead:
            raise RuntimeError(f"worker {index} is not running")
        w.ping_n += 1
        n = w.ping_n
        self._transport.send(w, wire.encode({"t": "ping", "n": n}))
        deadline = time.monotonic() + timeout_s
        while w.pong_n < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {w.pid} did not answer a ping within {timeout_s}s")
            await asyncio.sleep(0.005)
        return w.rejected
