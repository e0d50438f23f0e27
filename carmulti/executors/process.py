"""Process executor: agents run in a pool of worker processes connected by ZeroMQ.

Design (see README.md, section "Where agents run"):

* **Processes.** ``workers`` processes started with ``multiprocess`` (``spawn``
  or ``forkserver``; never ``fork``, and never ``set_start_method``), each
  running one uvloop loop with many agents concurrently (:mod:`._worker`).
* **Sockets.** The coordinator binds one ROUTER (``ROUTER_MANDATORY``, explicit
  ``SNDHWM``/``RCVHWM``, ``LINGER`` 0) on ``ipc://`` in a private temporary
  directory; each worker connects two DEALERs (main + synchronous RPC). Plain
  zmq sockets are driven by ``loop.add_reader(sock.FD)``; every wake-up drains
  all ready messages.
* **Batching.** Jobs, results, events and requests are batched per frame (up to
  ``batch_size`` jobs or results per frame) and flushed once per loop
  iteration. Frames are orjson objects validated by :mod:`._wire`.
* **Runners** are pickled with dill once per executor and shipped once per
  worker, cached by id. Each ``SharedInfra`` likewise ships ``(budget,
  policies)`` once per worker; the budget attaches to the same shared-memory
  counters, so workers charge it directly and lock-free.
* **State.** A worker's agent reads the coordinator's live store through a
  synchronous RPC (one round trip per key it has not written itself); its
  writes and deletes are recorded locally, in order, and shipped back with its
  result. Isolated jobs (``job.isolated``) come back as an
  :class:`~carmulti.AgentContext` whose overlay holds those writes: the
  pattern merges it (``AgentRun.merge``) only on success, else discards it.
  Shared jobs' writes are applied to ``infra.state`` in order **when the
  result arrives** -- unlike the local executor, other agents do not see a
  shared agent's writes while it is still running.
* **Events** stream back in batches and are appended with
  ``infra.log.append_batch`` before the result of the same batch is handled.
* **Tools and mailboxes.** ``job.tool_executor`` stays in the coordinator;
  tool calls are proxied to it (this is how ``Delegator`` works: specialists
  run through this executor again). ``job.mailbox`` (``Mailbox`` or
  ``PooledMailbox``) stays in the coordinator too, which brokers messages by
  agent name: the worker gets a proxy with the same API, so bounded inboxes,
  backpressure, ``MailboxFull`` and ``MailboxSend`` behave exactly as
  in-process. Nothing is dropped silently.
* **Faults.** A dead worker (e.g. ``kill -9``) fails the agents it held with
  ``worker {pid} died (SIGKILL) while running this agent`` (at-most-once) and
  is replaced; agents declared idempotent (``metadata={"idempotent": True}``)
  are re-run on another worker instead, up to ``idempotent_retries`` times;
  more than ``max_restarts`` restarts within ``restart_period_s`` stop the
  pool with :class:`~carmulti.SupervisorGaveUp` (OTP restart intensity). At
  ``infra.agent_timeout_s`` the worker cancels the runner (``timeout after
  {n}s``); a runner that ignores cancellation for ``cancel_grace_s`` is
  SIGKILLed with its worker, which is replaced.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Sequence

import orjson
import zmq

from ..errors import SupervisorGaveUp, WireProtocolError
from ..isolation import AgentContext
from ..mailbox import Inbox, Mailbox
from . import _wire as W
from ._worker import dec_value, enc_value
from .base import GC_RELAX_AT, IDEMPOTENT_METADATA_KEY, AgentJob, AgentRun, gc_relax, gc_restore

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["ProcessExecutor"]

log = logging.getLogger("carmulti.executors.process")

#: Running executors, held strongly: an executor the program dropped without closing must still
#: have its workers killed at interpreter exit (a weak set let it be collected while its workers
#: kept multiprocess's resource tracker alive, and exit then waited for the tracker forever).
_LIVE: "set[ProcessExecutor]" = set()
_OWNED_HELPERS: set[str] = set()  # multiprocess helper processes we started ("tracker", "forkserver")
_ATEXIT = False


def _describe_exit(pid: int | None, code: int | None) -> str:
    if code is None:
        return f"worker {pid} died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {pid} died ({name})"
    return f"worker {pid} exited with code {code}"


class _P:
    """One job in flight (coordinator side)."""

    __slots__ = ("id", "job", "infra", "runner", "worker", "fut", "batch", "slot", "deadline", "tasks", "objs",
                 "sent_at", "done", "unsent", "attempts", "rentry", "ientry")

    def __init__(self, jid: int, job: AgentJob, infra: "SharedInfra", runner: Any, rentry: "_Cached",
                 ientry: "_Cached") -> None:
        self.id = jid
        self.job = job
        self.infra = infra
        self.runner = runner
        self.rentry = rentry
        self.ientry = ientry
        self.worker: _W | None = None
        self.fut: asyncio.Future[AgentRun] | None = None
        self.batch: _Batch | None = None
        self.slot = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] | None = None
        self.objs: list[int] | None = None
        self.sent_at = 0.0
        self.done = False
        self.unsent = True
        self.attempts = 1


class _Batch:
    __slots__ = ("runs", "left", "fut")

    def __init__(self, n: int, fut: asyncio.Future[list[AgentRun]]) -> None:
        self.runs: list[AgentRun | None] = [None] * n
        self.left = n
        self.fut = fut


class _W:
    """One worker process (coordinator side)."""

    def __init__(self, index: int, gen: int, proc: Any) -> None:
        self.index = index
        self.gen = gen
        self.ident = f"w{index}.{gen}".encode()
        self.proc = proc
        self.pid: int | None = proc.pid
        self.ready = False
        self.ready_fut: asyncio.Future[None] | None = None
        self.dead = False
        self.kill_reason: str | None = None
        self.stuck_job: int | None = None
        self.inflight: dict[int, _P] = {}
        self.out: list[_P] = []
        self.ctrl: list[list[bytes]] = []
        self.rets: list[dict[str, Any]] = []
        self.cancels: list[int] = []
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.runners: set[int] = set()
        self.infras: set[int] = set()
        self.req_tasks: dict[int, asyncio.Task[Any]] = {}
        self.ping_n = 0
        self.pong_n = 0
        self.rejected = 0
        self.reader = False
        self.last_seen = time.monotonic()


class _Cached:
    """A runner, or one ``SharedInfra``'s ``(budget, policies)``, shipped once to each worker that needs it.

    ``users`` counts the jobs in flight that need it; at zero it is idle, and the
    executor keeps only the most recent idle entries (``_IDLE_CACHE``), telling
    workers to ``forget`` the others, so a long-lived executor serving many
    fresh coordinations keeps flat memory and shared-memory mappings.
    """

    __slots__ = ("cid", "obj", "blob", "users", "budget", "policies", "ref", "dead", "__weakref__")

    def __init__(self, cid: int, obj: Any) -> None:
        self.cid = cid
        self.obj = obj  # the runner (strong: it may not support weak references); None for an infra
        self.blob: bytes | None = None  # the dill pickle, made on first shipment
        self.users = 0
        self.budget: Any = None
        self.policies: Any = None
        self.ref: Any = None  # weakref to the SharedInfra
        self.dead = False  # an infra that was collected, or whose budget/policies were replaced


#: Idle runners (and, separately, idle infras) an executor keeps shipped to its workers.
_IDLE_CACHE = 8


# Methods a worker may call on coordinator-side mailbox objects: (type, name) -> async?
_NOTHING = object()

_ASYNC_METHODS = {("Mailbox", "send"), ("Mailbox", "broadcast"), ("Inbox", "recv"), ("MessageRouter", "send")}
_SYNC_METHODS = {("Mailbox", "register"), ("Mailbox", "unregister"), ("Mailbox", "names"), ("Mailbox", "contains"),
                 ("Inbox", "try_recv"), ("Inbox", "qsize"), ("MessageRouter", "register"),
                 ("MessageRouter", "unregister"), ("MessageRouter", "agent_count")}


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
            :class:`~carmulti.SupervisorGaveUp`.
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
            cyclic GC does not rescan them on every collection.
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

    Raises:
        ValueError: a bad argument (``workers < 1``, ``start_method="fork"`` or
            unknown, a non-positive timeout or size).

    Attributes:
        rejected_frames: Frames the coordinator rejected as malformed
            (:class:`~carmulti.WireProtocolError`, logged), for monitoring.
        restarts: Worker restarts so far.

    Usage::

        async with SharedInfra(executor=ProcessExecutor(workers=4)) as infra:
            result = await Swarm(agents).run(task, runner, infra)
    """

    def __init__(self, workers: int | None = None, *, start_method: str = "spawn", max_restarts: int = 5,
                 restart_period_s: float = 10.0, cancel_grace_s: float = 1.0, batch_size: int = 512,
                 max_inflight_per_worker: int = 8192, hwm: int = 10_000, startup_timeout_s: float = 60.0,
                 shutdown_timeout_s: float = 2.0, rpc_timeout_s: float = 60.0,
                 max_frame_bytes: int = W.DEFAULT_MAX_FRAME_BYTES, gc_freeze: bool = True,
                 idempotent_retries: int = 2, heartbeat_timeout_s: float = 10.0) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"ProcessExecutor workers must be an int >= 1, got {workers!r}")
        if start_method == "fork":
            raise ValueError("ProcessExecutor start_method='fork' is not supported: forking a process that runs "
                             "threads (zmq, uvloop) is unsafe; use 'spawn' (default) or 'forkserver'")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"ProcessExecutor start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        for name, v in (("restart_period_s", restart_period_s), ("cancel_grace_s", cancel_grace_s),
                        ("startup_timeout_s", startup_timeout_s), ("shutdown_timeout_s", shutdown_timeout_s),
                        ("rpc_timeout_s", rpc_timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"ProcessExecutor {name} must be a number of seconds > 0, got {v!r}")
        for name, v in (("batch_size", batch_size), ("max_inflight_per_worker", max_inflight_per_worker),
                        ("hwm", hwm), ("max_frame_bytes", max_frame_bytes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ProcessExecutor {name} must be an int >= 1, got {v!r}")
        if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
            raise ValueError(f"ProcessExecutor max_restarts must be an int >= 0, got {max_restarts!r}")
        if not isinstance(idempotent_retries, int) or isinstance(idempotent_retries, bool) or idempotent_retries < 0:
            raise ValueError(f"ProcessExecutor idempotent_retries must be an int >= 0, got {idempotent_retries!r}")
        self.idempotent_retries = idempotent_retries
        self.workers = workers
        self.start_method = start_method
        self.max_restarts = max_restarts
        self.restart_period_s = float(restart_period_s)
        self.cancel_grace_s = float(cancel_grace_s)
        self.batch_size = batch_size
        self.max_inflight_per_worker = max_inflight_per_worker
        self.hwm = hwm
        self.startup_timeout_s = float(startup_timeout_s)
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self.rpc_timeout_s = float(rpc_timeout_s)
        self.max_frame_bytes = max_frame_bytes
        self.gc_freeze = gc_freeze
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.rejected_frames = 0
        self.restarts = 0
        self._reset()

    def _reset(self) -> None:
        self._running = False
        self._starting: asyncio.Future[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._dir: str | None = None
        self.endpoint: str | None = None
        self._mp: Any = None
        self._slots: list[_W | None] = [None] * self.workers
        self._all: list[_W] = []
        self._by_ident: dict[bytes, _W] = {}
        self._pending: dict[int, _P] = {}
        self._queue: collections.deque[_P] = collections.deque()
        self._next_id = 1
        self._runners: dict[int, _Cached] = {}  # id(runner) -> entry
        self._infras: "weakref.WeakKeyDictionary[SharedInfra, _Cached]" = weakref.WeakKeyDictionary()
        self._infra_by_id: dict[int, _Cached] = {}
        self._idle_runners: collections.OrderedDict[int, _Cached] = collections.OrderedDict()  # by cid
        self._idle_infras: collections.OrderedDict[int, _Cached] = collections.OrderedDict()
        self._next_cid = 0
        self._collected: collections.deque[_Cached] = collections.deque()
        self._objs: dict[int, list[Any]] = {}
        self._oid_by_id: dict[int, int] = {}
        self._next_oid = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restart_times: collections.deque[float] = collections.deque()
        self._causes: list[str] = []
        self._gave_up: SupervisorGaveUp | None = None
        self._flush_scheduled = False
        self._read_scheduled = False
        self._reject_logged = 0
        self._watchdog: asyncio.TimerHandle | None = None

    # -- introspection -------------------------------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        """Pids of the live worker processes (in worker-slot order)."""
        return [w.pid for w in self._slots if w is not None and not w.dead and w.pid is not None]

    @property
    def running(self) -> bool:
        return self._running

    def __repr__(self) -> str:
        return (f"<ProcessExecutor workers={self.workers} start_method={self.start_method!r} "
                f"running={self._running} pids={self.pids}>")

    # -- lifecycle ----------------------------------------------------------------------------------------
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
        if self._running:
            return
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        loop = asyncio.get_running_loop()
        self._starting = loop.create_future()
        try:
            await self._start(loop)
        except BaseException as exc:
            self._starting.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            self._starting.exception()  # retrieved
            await self._teardown()
            self._reset()
            raise
        self._running = True
        period = self.heartbeat_timeout_s / 4
        self._watch_due = time.monotonic() + period
        self._watchdog = loop.call_later(period, self._watch)
        self._starting.set_result(None)
        self._starting = None

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        global _ATEXIT
        import multiprocess

        self._loop = loop
        _sweep_stale_dirs()
        self._dir = tempfile.mkdtemp(prefix=_DIR_PREFIX)
        self.endpoint = f"ipc://{self._dir}/coordinator"
        ctx = self._ctx = zmq.Context()
        sock = self._sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes + W.SOCKET_SLACK)  # bigger: the sender is cut off
        sock.bind(self.endpoint)
        loop.add_reader(sock.FD, self._on_readable)
        self._mp = multiprocess.get_context(self.start_method)
        self._note_helpers()
        _LIVE.add(self)
        if not _ATEXIT:
            atexit.register(_atexit)
            _ATEXIT = True
        for i in range(self.workers):
            self._spawn(i, 0)
        futs = [w.ready_fut for w in self._slots if w is not None]
        done, pending = await asyncio.wait(futs, timeout=self.startup_timeout_s)  # type: ignore[arg-type]
        for f in done:
            if f.exception() is not None:
                raise RuntimeError(f"ProcessExecutor could not start: {f.exception()}")
        if pending:
            raise RuntimeError(f"ProcessExecutor could not start: {len(pending)} of {self.workers} workers did not "
                               f"connect within {self.startup_timeout_s}s")

    def _note_helpers(self) -> None:
        """Remember whether multiprocess's resource tracker / fork server were running before us."""
        from multiprocess import forkserver, resource_tracker

        if getattr(resource_tracker._resource_tracker, "_fd", None) is None:
            _OWNED_HELPERS.add("tracker")
        if self.start_method == "forkserver" and getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            _OWNED_HELPERS.add("forkserver")

    def _spawn(self, index: int, gen: int) -> _W:
        from . import _worker

        cfg = {"endpoint": self.endpoint, "index": index, "gen": gen, "hwm": self.hwm,
               "max_frame_bytes": self.max_frame_bytes, "batch_size": self.batch_size,
               "cancel_grace_s": self.cancel_grace_s, "rpc_timeout_s": self.rpc_timeout_s,
               "gc_freeze": self.gc_freeze, "heartbeat_interval_s": self.heartbeat_timeout_s / 5}
        proc = self._mp.Process(target=_worker.main, args=(cfg,), name=f"carmulti-worker-{index}.{gen}", daemon=True)
        proc.start()
        w = _W(index, gen, proc)
        w.ready_fut = self._loop.create_future()  # type: ignore[union-attr]
        self._loop.add_reader(proc.sentinel, self._on_exit, w)  # type: ignore[union-attr]
        w.reader = True
        self._slots[index] = w
        self._all.append(w)
        self._by_ident[w.ident] = w
        self._by_ident[w.ident + b"/r"] = w
        self._by_ident[w.ident + b"/h"] = w
        return w

    async def aclose(self) -> None:
        """Stop every worker and release sockets, files and helper processes. Idempotent.

        Jobs still running get error outputs (``executor closed``). Workers get
        ``stop`` and ``shutdown_timeout_s`` to exit, then SIGKILL.
        """
        if self._starting is not None:
            try:
                await asyncio.shield(self._starting)
            except Exception:  # noqa: BLE001 - start failed and cleaned up
                return
        if not self._running:
            return
        self._closing = True
        for p in list(self._pending.values()):
            self._resolve(p, AgentRun(None, "executor closed while this agent was running", 0.0))
        self._queue.clear()
        for w in self._slots:
            if w is not None and not w.dead and w.ready:
                self._send(w, W.encode({"t": "stop"}))
        deadline = time.monotonic() + self.shutdown_timeout_s
        while any(not w.dead for w in self._all) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._teardown()
        self._reset()

    async def _teardown(self) -> None:
        loop = self._loop
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for w in self._all:
            if w.proc is not None and w.proc.exitcode is None:
                try:
                    os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
                except (ProcessLookupError, TypeError):
                    pass
        for w in self._all:
            if w.reader and loop is not None:
                loop.remove_reader(w.proc.sentinel)
                w.reader = False
            w.dead = True
            try:
                w.proc.join(5.0)
                w.proc.close()
            except Exception:  # noqa: BLE001
                pass
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._close_sockets()
        _LIVE.discard(self)
        if not any(e._running and e is not self for e in list(_LIVE)):
            _stop_helpers()

    def _close_sockets(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.remove_reader(self._sock.FD)
                except Exception:  # noqa: BLE001
                    pass
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            t = threading.Thread(target=ctx.term, name="carmulti-zmq-term", daemon=True)
            t.start()
            t.join(5.0)
            if t.is_alive():
                log.error("zmq Context.term() did not finish within 5s")
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _kill_now(self) -> None:
        """Synchronous last-resort cleanup (interpreter exit)."""
        for w in self._all:
            try:
                if w.proc.exitcode is None:
                    os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
                w.proc.join(2.0)
            except Exception:  # noqa: BLE001
                pass
        try:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
        except Exception:  # noqa: BLE001
            pass
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._running = False

    # -- the executor protocol ---------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._gave_up is not None:
            raise self._gave_up
        if self._closing:
            raise RuntimeError("ProcessExecutor is closing")

    async def run_agent(self, runner: "AgentRunner", job: AgentJob, infra: "SharedInfra") -> AgentRun:
        """Run one agent on a worker; never raises for agent failures (see ``executors.base``).

        Raises:
            SupervisorGaveUp: the pool stopped after too many worker restarts.
            RuntimeError: the executor could not start, or is closing.
            asyncio.CancelledError: the caller cancelled (the agent is cancelled in its worker).
        """
        if not self._running:
            await self.start()
        self._check_usable()
        p = self._new_pending(job, infra, runner)
        fut = p.fut = self._loop.create_future()  # type: ignore[union-attr]
        self._enqueue(p)
        try:
            return await fut
        except asyncio.CancelledError:
            self._cancel(p)
            raise

    async def run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob], infra: "SharedInfra") -> list[AgentRun]:
        """Run ``jobs`` concurrently across the workers; results in job order.

        Raises:
            SupervisorGaveUp: the pool stopped after too many worker restarts.
            RuntimeError: the executor could not start, or is closing.
        """
        if not jobs:
            return []
        if not self._running:
            await self.start()
        self._check_usable()
        big = len(jobs) >= GC_RELAX_AT
        if big:
            gc_relax()
        try:
            return await self._run_batch(runner, jobs, infra)
        finally:
            if big:
                gc_restore()

    async def _run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob], infra: "SharedInfra") -> list[AgentRun]:
        fut = self._loop.create_future()  # type: ignore[union-attr]
        batch = _Batch(len(jobs), fut)
        ps = []
        rentry, ientry = self._runner_entry(runner), self._infra_entry(infra)
        for i, job in enumerate(jobs):
            p = self._new_pending(job, infra, runner, rentry, ientry)
            p.batch = batch
            p.slot = i
            ps.append(p)
        self._queue.extend(ps)
        self._pump()
        try:
            return await fut
        except asyncio.CancelledError:
            for p in ps:
                self._cancel(p)
            raise

    def _new_pending(self, job: AgentJob, infra: "SharedInfra", runner: Any, rentry: _Cached | None = None,
                     ientry: _Cached | None = None) -> _P:
        jid = self._next_id
        self._next_id += 1
        rentry = rentry or self._runner_entry(runner)
        ientry = ientry or self._infra_entry(infra)
        for e, idle in ((rentry, self._idle_runners), (ientry, self._idle_infras)):
            if e.users == 0:
                idle.pop(e.cid, None)
            e.users += 1
        p = _P(jid, job, infra, runner, rentry, ientry)
        self._pending[jid] = p
        return p

    def _enqueue(self, p: _P) -> None:
        self._queue.append(p)
        self._pump()

    # -- scheduling --------------------------------------------------------------------------------------------
    def _runner_entry(self, runner: Any) -> _Cached:
        e = self._runners.get(id(runner))
        if e is None or e.obj is not runner:
            self._next_cid += 1
            e = self._runners[id(runner)] = _Cached(self._next_cid, runner)
        return e

    def _infra_entry(self, infra: "SharedInfra") -> _Cached:
        e = self._infras.get(infra)
        if e is None or e.budget is not infra.budget or e.policies is not infra.policies:
            if e is not None:
                self._retire(e)  # its budget or policies were replaced
            self._next_cid += 1
            e = _Cached(self._next_cid, None)
            e.budget, e.policies = infra.budget, infra.policies
            e.ref = weakref.ref(infra, functools.partial(_infra_collected, weakref.ref(self), e))
            self._infras[infra] = e
            self._infra_by_id[e.cid] = e
        return e

    def _retire(self, e: _Cached) -> None:
        """An infra entry no coordination can use again: forget it once its last job is done."""
        e.dead = True
        if e.users == 0 and e.cid in self._infra_by_id:
            self._idle_infras[e.cid] = e

    @staticmethod
    def _blob(e: _Cached, limit: int) -> bytes:
        if e.blob is None:
            from ._pickle import dumps

            e.blob = dumps(e.obj) if e.obj is not None else dumps((e.budget, e.policies))
        if len(e.blob) > limit:
            what = "the runner" if e.obj is not None else "the infra's budget and policies"
            raise ValueError(W.too_big(f"{what} pickled with dill", len(e.blob), limit))
        return e.blob

    def _release(self, p: _P) -> None:
        """A job is done with its runner and infra entries."""
        for e, idle in ((p.rentry, self._idle_runners), (p.ientry, self._idle_infras)):
            e.users -= 1
            if e.users == 0:
                idle[e.cid] = e

    def _evict(self) -> None:
        """Forget idle entries beyond the most recent ``_IDLE_CACHE`` (and every dead infra), here and in workers."""
        runners: list[int] = []
        infras: list[int] = []
        while self._collected:  # infras garbage-collected since (appended by a weakref callback)
            self._retire(self._collected.popleft())
        idle = self._idle_runners
        while len(idle) > _IDLE_CACHE:
            _, e = idle.popitem(last=False)
            if self._runners.get(id(e.obj)) is e:
                del self._runners[id(e.obj)]
            runners.append(e.cid)
        idle = self._idle_infras
        for cid in [cid for cid, e in idle.items() if e.dead]:
            infras.append(cid)
            del idle[cid]
        while len(idle) > _IDLE_CACHE:
            _, e = idle.popitem(last=False)
            infras.append(e.cid)
            e.dead = True
        for cid in infras:
            e = self._infra_by_id.pop(cid, None)
            inf = e.ref() if e is not None and e.ref is not None else None
            if inf is not None and self._infras.get(inf) is e:
                del self._infras[inf]
        if not (runners or infras):
            return
        for w in self._slots:
            if w is None or w.dead:
                continue
            fr = [c for c in runners if c in w.runners]
            fi = [c for c in infras if c in w.infras]
            w.runners.difference_update(fr)
            w.infras.difference_update(fi)
            if fr or fi:
                self._send(w, W.encode({"t": "forget", "runners": fr, "infras": fi}))

    def cached_counts(self) -> dict[str, int]:
        """How many runners and infras this executor keeps shipped to its workers (monitoring).

        Returns:
            ``{"runners": n, "infras": m}``: those used by jobs in flight plus at
            most ``_IDLE_CACHE`` (8) idle ones of each.
        """
        return {"runners": len(self._runners), "infras": len(self._infra_by_id)}

    def _pump(self) -> None:
        q = self._queue
        if not q or self._closing:
            return
        ready = [w for w in self._slots if w is not None and w.ready and not w.dead]
        if not ready:
            return
        cap = self.max_inflight_per_worker
        bs = self.batch_size
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
                w.out.append(p)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _mailbox_desc(self, mb: Any) -> tuple[dict[str, Any], list[int]]:
        """The wire descriptor of a coordinator-side mailbox, and the object ids it pins (one ref each)."""
        from ..pool import PooledMailbox

        if isinstance(mb, Mailbox):
            oid = self._ref_obj(mb)
            return {"k": "mb", "o": oid, "bs": mb.buffer_size}, [oid]
        if isinstance(mb, PooledMailbox):
            ib, rt = self._ref_obj(mb.inbox), self._ref_obj(mb.router)
            return {"k": "pool", "aid": mb.agent_id, "ib": ib, "rt": rt, "cap": mb.inbox.capacity}, [ib, rt]
        raise TypeError(f"a mailbox of type {type(mb).__name__} cannot be shared with a worker process "
                        "(use carmulti.Mailbox or the AgentPool's mailbox)")

    def _ref_obj(self, obj: Any) -> int:
        """Pin ``obj`` for workers: its object id, with one more reference."""
        oid = self._oid_by_id.get(id(obj))
        if oid is None or self._objs[oid][0] is not obj:
            oid = self._next_oid
            self._next_oid += 1
            self._objs[oid] = [obj, 0]
            self._oid_by_id[id(obj)] = oid
        self._objs[oid][1] += 1
        return oid

    def _unref(self, oid: int) -> None:
        ent = self._objs.get(oid)
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] <= 0:
            del self._objs[oid]
            if self._oid_by_id.get(id(ent[0])) == oid:
                del self._oid_by_id[id(ent[0])]

    def _encode_jobs(self, w: _W, ps: list[_P]) -> list[dict[str, Any]]:
        """Encode jobs for ``w`` (queuing runner/infra set-up frames it has not had yet)."""
        encoded: list[dict[str, Any]] = []
        now = time.monotonic()
        last_runner: Any = _NOTHING
        last_infra: Any = _NOTHING
        last_mb: Any = _NOTHING
        rid = iid = 0
        to: Any = None
        mbdesc: dict[str, Any] | None = None
        oids: list[int] = []
        for p in ps:
            if p.done:
                continue
            job = p.job
            try:
                if p.rentry is not last_runner:
                    rid = p.rentry.cid
                    if rid not in w.runners:
                        w.ctrl.append(W.encode({"t": "runner", "id": rid}, self._blob(p.rentry, self.max_frame_bytes)))
                        w.runners.add(rid)
                    last_runner = p.rentry
                if p.ientry is not last_infra:
                    iid = p.ientry.cid
                    if iid not in w.infras:
                        w.ctrl.append(W.encode({"t": "infra", "id": iid}, self._blob(p.ientry, self.max_frame_bytes)))
                        w.infras.add(iid)
                    to = p.infra.agent_timeout_s
                    last_infra = p.ientry
                spec = job.spec
                if spec.system_prompt or spec.tools or spec.max_turns != 10 or spec.metadata or spec.cache_control:
                    sd: dict[str, Any] = {"name": spec.name}
                    if spec.system_prompt:
                        sd["system_prompt"] = spec.system_prompt
                    if spec.tools:
                        sd["tools"] = spec.tools
                    if spec.max_turns != 10:
                        sd["max_turns"] = spec.max_turns
                    if spec.metadata:
                        sd["metadata"] = spec.metadata
                    if spec.cache_control:
                        sd["cache_control"] = True
                else:
                    sd = {"name": spec.name}
                d: dict[str, Any] = {"id": p.id, "r": rid, "i": iid, "spec": sd, "task": job.task}
                if job.isolated:
                    d["iso"] = True
                if job.tools:
                    d["tools"] = dict(job.tools)
                    if not job.validate_job_tools:
                        d["tv"] = False
                if not job.register_spec_tools:
                    d["st"] = False
                if job.tool_executor is not None:
                    d["tex"] = True
                if to is not None:
                    d["to"] = to
                mb = job.mailbox
                if mb is not None:
                    if mb is last_mb:
                        objs = self._objs
                        for oid in oids:
                            objs[oid][1] += 1
                    else:
                        mbdesc, oids = self._mailbox_desc(mb)
                        last_mb = mb
                    p.objs = oids
                    d["mb"] = mbdesc
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable runner or a foreign mailbox
                w.inflight.pop(p.id, None)
                self._resolve(p, AgentRun(None, f"could not send agent '{p.job.spec.name}' to a worker: "
                                                f"{type(exc).__name__}: {exc}", 0.0))
                continue
            p.unsent = False
            p.sent_at = now
            encoded.append(d)
        return encoded

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._sock is None:
            return
        self._evict()
        for w in self._slots:
            if w is None or w.dead:
                continue
            if w.out:
                self._flush_jobs(w)
            if w.rets:
                rets, w.rets = w.rets, []
                try:
                    data = orjson.dumps({"t": "ret", "rets": rets})
                except TypeError:
                    data = None
                if data is not None and len(data) <= self.max_frame_bytes:
                    self._send(w, [W.VERSION, data])
                else:
                    parts = [self._encode_ret(r) for r in rets]
                    for body in W.pack_frames(b'{"t":"ret","rets":[', b"]}", parts, self.max_frame_bytes):
                        self._send(w, [W.VERSION, body])
            if w.cancels:
                c, w.cancels = w.cancels, []
                self._send(w, W.encode({"t": "cancel", "jobs": c}))

    def _encode_ret(self, r: dict[str, Any]) -> bytes:
        """One reply as JSON that fits a frame; else an error reply naming the size."""
        r = _safe_ret(r)
        b = orjson.dumps(r)
        if len(b) > self.max_frame_bytes - W.FRAME_OVERHEAD:
            b = orjson.dumps({"rid": r["rid"], "err": {"type": "ValueError", "msg": W.too_big(
                "the reply (tool result or message)", len(b), self.max_frame_bytes)}})
        return b

    def _flush_jobs(self, w: _W) -> None:
        ps, w.out = w.out, []
        encoded = self._encode_jobs(w, ps)
        for f in w.ctrl:
            self._send(w, f)
        w.ctrl.clear()
        bs = self.batch_size
        limit = self.max_frame_bytes
        for k in range(0, len(encoded), bs):
            chunk = encoded[k:k + bs]
            try:
                data: bytes | None = orjson.dumps({"t": "jobs", "jobs": chunk})
            except TypeError:
                data = None
            if data is not None and len(data) <= limit:
                self._send(w, [W.VERSION, data])
                continue
            # rare: a job orjson refused, or more bytes than one frame takes: job by job
            parts = []
            for d in chunk:
                problem = None
                try:
                    b = orjson.dumps(d)
                    if len(b) > limit - W.FRAME_OVERHEAD:
                        problem = W.too_big(f"the job of agent '{d['spec']['name']}' (task of "
                                            f"{len(d['task'].encode('utf-8', 'surrogatepass'))} bytes)", len(b), limit)
                except TypeError:
                    bad = W.find_unserializable(d, "$") or ("$", "not JSON-serializable")
                    problem = f"{bad[0]}: {bad[1]}"
                if problem is None:
                    parts.append(b)
                    continue
                p = self._pending.get(d["id"])
                if p is not None:
                    w.inflight.pop(p.id, None)
                    self._resolve(p, AgentRun(None, f"could not send agent '{p.job.spec.name}' to a worker: "
                                                    f"{problem}", 0.0))
            for body in W.pack_frames(b'{"t":"jobs","jobs":[', b"]}", parts, limit):
                self._send(w, [W.VERSION, body])
        grace = self.cancel_grace_s
        loop = self._loop
        for d in encoded:
            to = d.get("to")
            if to is not None:
                p = self._pending.get(d["id"])
                if p is not None and p.deadline is None:
                    p.deadline = loop.call_later(to + grace + 0.1, self._deadline, p)  # type: ignore[union-attr]

    def _send(self, w: _W, frames: list[bytes]) -> None:
        sock = self._sock
        if sock is None or w.dead:
            return
        if w.backlog:
            w.backlog.append(frames)
            return
        try:
            sock.send_multipart([w.ident, *frames], zmq.NOBLOCK)
        except zmq.Again:
            w.backlog.append(frames)
            self._loop.call_later(0.005, self._drain_backlog, w)  # type: ignore[union-attr]
            return
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # the worker is gone; its sentinel fails its agents
                log.warning("worker %s unreachable (%s); its agents fail when its exit is seen", w.pid, exc)
                return
            raise
        self._schedule_read()

    def _drain_backlog(self, w: _W) -> None:
        sock = self._sock
        while w.backlog and sock is not None and not w.dead:
            try:
                sock.send_multipart([w.ident, *w.backlog[0]], zmq.NOBLOCK)
            except zmq.Again:
                self._loop.call_later(0.005, self._drain_backlog, w)  # type: ignore[union-attr]
                return
            except zmq.ZMQError:
                w.backlog.clear()
                return
            w.backlog.popleft()
        self._schedule_read()

    def _schedule_read(self) -> None:
        if not self._read_scheduled and self._loop is not None:
            self._read_scheduled = True
            self._loop.call_soon(self._on_readable)

    # -- receiving ------------------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        self._read_scheduled = False
        sock = self._sock
        if sock is None:
            return
        got_results = False
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                w = self._by_ident.get(frames[0])
                if w is None or w.dead:
                    self._reject(None, f"frame from unknown peer {frames[0][:32]!r}")
                    continue
                w.last_seen = time.monotonic()
                if self._on_frames(w, frames[1:], frames[0]):
                    got_results = True
        except zmq.Again:
            pass
        if got_results:
            self._pump()

    def _on_frames(self, w: _W, frames: list[bytes], ident: bytes | None = None) -> bool:
        """Handle one message from worker ``w`` (identity stripped); True if it carried results.

        A message that fails validation is counted and logged (rate-limited); the
        jobs and requests it carried, as far as they can be read, are failed
        with the reason, and the worker is asked which of its other jobs it
        still owes (a result it sent may have been in that message).
        """
        try:
            body, blob = W.decode(frames, W.TO_COORDINATOR, self.max_frame_bytes)
        except WireProtocolError as exc:
            self._reject(w, str(exc))
            raw = frames[1] if len(frames) >= 2 else b""
            detail = f"the coordinator rejected a result frame from worker {w.pid}: {exc.path}: {exc.msg}"
            for jid in W.salvage_ids(raw, "res", "id"):
                p = w.inflight.pop(jid, None)
                if p is not None and not p.done:
                    self._resolve(p, AgentRun(None, detail, (time.monotonic() - p.sent_at) * 1000.0))
            for rid in W.salvage_ids(raw, "req", "rid"):
                w.rets.append({"rid": rid, "err": {"type": "RuntimeError", "msg": f"request rejected: {exc}"}})
            self._audit(w)
            return False
        t = body["t"]
        if t == "batch":
            self._on_batch(w, body)
            return True
        if t == "hb":
            return False
        if t == "rpc":
            self._on_rpc(w, ident if ident is not None else w.ident + b"/r", body)
        elif t == "hello":
            self._on_hello(w, body)
        elif t == "pong":
            self._on_pong(w, body)
        elif t == "stuck":
            p = self._pending.get(body["job"])
            name = p.job.spec.name if p is not None else f"job {body['job']}"
            w.stuck_job = body["job"]
            to = p.infra.agent_timeout_s if p is not None else None
            self._kill(w, f"agent '{name}' ignored cancellation for {self.cancel_grace_s}s after its {to}s timeout")
        elif t == "nack":
            self._reject(None, f"worker {w.pid} rejected a frame: {body['err']}", count=False)
            for jid in body.get("jobs") or ():
                p = w.inflight.pop(jid, None)
                if p is not None and not p.done:
                    self._resolve(p, AgentRun(None, f"worker {w.pid} rejected this agent's job: {body['err']}",
                                              (time.monotonic() - p.sent_at) * 1000.0))
        return False

    def _reject(self, w: _W | None, why: str, *, count: bool = True) -> None:
        """Count (``rejected_frames``) and log a rejected frame; a flood logs a few lines, not one per frame."""
        if count:
            self.rejected_frames += 1
        self._reject_logged += 1
        n = self._reject_logged
        if n <= 3 or n % 1000 == 0:
            src = f"worker {w.pid}" if w is not None else "a peer"
            log.warning("ProcessExecutor rejected a frame from %s (%d rejected so far; logging the first 3 and "
                        "every 1000th): %s", src, n, why)

    def _audit(self, w: _W, jobs: list[int] | None = None) -> None:
        """Ask ``w`` which of ``jobs`` (default: all it holds) it still runs or owes; the rest were lost."""
        if w.dead or not w.ready:
            return
        ids = [p.id for p in w.inflight.values() if not p.unsent] if jobs is None else jobs
        if not ids:
            return
        w.ping_n += 1
        self._send(w, W.encode({"t": "ping", "n": w.ping_n, "jobs": ids}))

    def _on_pong(self, w: _W, body: dict[str, Any]) -> None:
        w.pong_n = max(w.pong_n, body["n"])
        w.rejected = body["rejected"]
        now = time.monotonic()
        for jid in body.get("unknown") or ():
            p = w.inflight.pop(jid, None)
            if p is not None and not p.done and not p.unsent:
                self._resolve(p, AgentRun(None, f"the result of this agent was lost on its way from worker {w.pid}",
                                          (now - p.sent_at) * 1000.0))

    def _on_hello(self, w: _W, body: dict[str, Any]) -> None:
        spawned = w.proc.pid
        if body["pid"] != spawned or body["index"] != w.index or body["gen"] != w.gen or w.ready:
            # never trust a pid from the wire: a process that took this identity must not
            # make aclose() kill whatever pid it names
            self._reject(w, f"hello with pid {body['pid']} index {body['index']} gen {body['gen']} does not match "
                            f"the worker spawned as pid {spawned} (index {w.index}, gen {w.gen}); ignored")
            return
        w.ready = True
        w.last_seen = time.monotonic()
        if w.ready_fut is not None and not w.ready_fut.done():
            w.ready_fut.set_result(None)
        self._pump()

    def _on_batch(self, w: _W, body: dict[str, Any]) -> None:
        ev = body.get("ev")
        if ev:
            for iid, recs in ev:
                e = self._infra_by_id.get(iid)
                infra = e.ref() if e is not None else None
                if infra is None:
                    continue
                try:
                    infra.log.append_batch(recs)
                except (TypeError, ValueError) as exc:
                    self.rejected_frames += 1
                    log.warning("ProcessExecutor: events from worker %s rejected: %s", w.pid, exc)
        req = body.get("req")
        if req:
            for q in req:
                self._on_request(w, q)
        res = body.get("res")
        if res:
            pending = self._pending
            inflight = w.inflight
            for r in res:
                p = pending.get(r["id"])
                if p is None or p.worker is not w:
                    continue
                inflight.pop(p.id, None)
                self._on_result(p, r)

    def _on_result(self, p: _P, r: dict[str, Any]) -> None:
        infra = p.infra
        ops = r.get("ops")
        ctx = None
        err = r["err"]
        try:
            if p.job.isolated:
                ctx = AgentContext(p.job.spec.name, infra.state)
                if ops:
                    st = ctx.local_state
                    for op in ops:
                        if op[0] == "s":
                            st.set(op[1], op[2], op[3])
                        else:
                            st.delete(op[1], op[2])
            elif ops:
                st = infra.state
                for op in ops:
                    if op[0] == "s":
                        st.set(op[1], op[2], op[3])
                    else:
                        st.delete(op[1], op[2])
        except Exception as exc:  # noqa: BLE001
            err = err or f"could not apply the agent's state writes: {type(exc).__name__}: {exc}"
        out = r.get("out")
        if err is None and out is not None:
            output = W.output_from_wire(out)
            self._resolve(p, AgentRun(output, output.error, r["dur"], ctx))  # error: reported by the runner
        else:
            self._resolve(p, AgentRun(None, err or "internal: missing result", r["dur"], ctx))

    def _resolve(self, p: _P, run: AgentRun | None, exc: BaseException | None = None) -> None:
        if p.done:
            return
        p.done = True
        self._pending.pop(p.id, None)
        self._release(p)
        if p.deadline is not None:
            p.deadline.cancel()
            p.deadline = None
        if p.tasks:
            for t in p.tasks:
                t.cancel()
        if p.objs:
            for oid in p.objs:
                self._unref(oid)
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

    def _cancel(self, p: _P) -> None:
        """The caller cancelled: forget the job, and cancel it in its worker if it was sent."""
        if p.done:
            return
        w = p.worker
        was_sent = w is not None and not p.unsent
        if w is not None:
            w.inflight.pop(p.id, None)
            if was_sent and not w.dead:
                w.cancels.append(p.id)
                self._schedule_flush()
        p.batch = None
        p.fut = None
        self._resolve(p, None)

    # -- requests from workers --------------------------------------------------------------------------------------
    def _on_request(self, w: _W, q: dict[str, Any]) -> None:
        rid = q["rid"]
        op = q["op"]
        if op == "cancel":
            t = w.req_tasks.pop(q["target"], None)
            if t is not None:
                t.cancel()
            return
        p = self._pending.get(q["job"])
        if p is None or p.worker is not w:
            w.rets.append({"rid": rid, "err": {"type": "RuntimeError", "msg": "the agent's job is no longer running"}})
            self._schedule_flush()
            return
        if op == "tool":
            tex = p.job.tool_executor
            if tex is None:
                w.rets.append({"rid": rid, "err": {"type": "ToolError",
                                                   "msg": f"no tool executor installed for tool '{q['tool']}'"}})
                self._schedule_flush()
                return
            make = functools.partial(tex.execute, q["tool"], q["params"])
        else:
            obj = self._objs.get(q["o"])
            kw = q.get("kw") or {}
            if obj is None or (type(obj[0]).__name__, q["m"]) not in _ASYNC_METHODS or not isinstance(kw, dict):
                w.rets.append({"rid": rid, "err": {"type": "RuntimeError",
                                                   "msg": f"mailbox call {q['m']!r} not allowed or object gone"}})
                self._schedule_flush()
                return
            make = functools.partial(getattr(obj[0], q["m"]), *[dec_value(a) for a in q["a"]], **kw)
        # the coroutine is created inside the task, so a task cancelled before it starts
        # leaves no never-awaited coroutine behind
        task = self._loop.create_task(self._serve(w, rid, make))  # type: ignore[union-attr]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        w.req_tasks[rid] = task
        if p.tasks is None:
            p.tasks = set()
        p.tasks.add(task)

    async def _serve(self, w: _W, rid: int, make: Any) -> None:
        try:
            val = await make()
            ret = {"rid": rid, "ok": enc_value(val)}
        except asyncio.CancelledError:
            # Still answer (with nothing) so the worker can forget the request; a
            # reply already on its way when the cancel came is kept by the worker.
            if not w.dead and not self._closing:
                w.rets.append({"rid": rid, "ok": None})
                self._schedule_flush()
            return
        except Exception as exc:  # noqa: BLE001 - a failed tool call / mailbox op goes back to the agent
            ret = {"rid": rid, "err": W.encode_error(exc)}
        finally:
            w.req_tasks.pop(rid, None)
        if not w.dead:
            w.rets.append(ret)
            self._schedule_flush()

    def _on_rpc(self, w: _W, ident: bytes, body: dict[str, Any]) -> None:
        op = body["op"]
        rid = body["rid"]
        try:
            if op == "call":
                ok = self._sync_call(body)
            else:
                e = self._infra_by_id.get(body["i"])
                infra = e.ref() if e is not None else None
                if infra is None:
                    raise RuntimeError(f"unknown infra {body['i']}")
                st = infra.state
                if op == "get":
                    k = body["k"]
                    ok = [True, st.get(k)] if st.exists(k) else [False]
                elif op == "exists":
                    ok = st.exists(body["k"])
                else:
                    ok = list(st.keys())
            rep = {"t": "rret", "rid": rid, "ok": ok}
        except Exception as exc:  # noqa: BLE001
            rep = {"t": "rret", "rid": rid, "err": W.encode_error(exc)}
        try:
            data = orjson.dumps(rep)
        except TypeError as exc:
            data = orjson.dumps({"t": "rret", "rid": rid, "err": {"type": "TypeError", "msg": str(exc)}})
        if len(data) > self.max_frame_bytes - W.FRAME_OVERHEAD:
            what = f"the state value for key {body['k']!r}" if op == "get" else f"the reply to {op!r}"
            data = orjson.dumps({"t": "rret", "rid": rid, "err": {"type": "ValueError", "msg": W.too_big(
                what, len(data), self.max_frame_bytes)}})
        try:
            self._sock.send_multipart([ident, W.VERSION, data], zmq.NOBLOCK)  # type: ignore[union-attr]
        except zmq.ZMQError as exc:
            log.warning("RPC reply to worker %s failed: %s", w.pid, exc)
        self._schedule_read()

    def _sync_call(self, body: dict[str, Any]) -> Any:
        p = self._pending.get(body["job"])
        ent = self._objs.get(body["o"])
        if p is None or ent is None:
            raise RuntimeError("the agent's job is no longer running")
        obj = ent[0]
        m = body["m"]
        if (type(obj).__name__, m) not in _SYNC_METHODS:
            raise RuntimeError(f"mailbox call {m!r} not allowed on {type(obj).__name__}")
        args = [dec_value(a) for a in body["a"]]
        if m == "contains":
            return args[0] in obj
        res = getattr(obj, m)(*args)
        if isinstance(res, Inbox):
            oid = self._ref_obj(res)
            p.objs = [*(p.objs or ()), oid]
            return {"$inbox": oid, "name": res.name, "cap": res.capacity}
        return enc_value(res)

    # -- faults -------------------------------------------------------------------------------------------------------
    def _kill(self, w: _W, reason: str) -> None:
        if w.dead or w.kill_reason is not None:
            return
        w.kill_reason = reason
        log.warning("ProcessExecutor: killing worker %s: %s", w.pid, reason)
        try:
            os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
        except (ProcessLookupError, TypeError):
            pass

    def _deadline(self, p: _P) -> None:
        """A job is past timeout + grace: ask its worker about it (ping); a silent loop gets the worker killed.

        The pong says whether the worker still runs the job (it enforces the
        timeout itself: re-arm) or no longer knows it (its result was lost on
        the way: the job fails now, see :meth:`_on_pong`).
        """
        p.deadline = None
        w = p.worker
        if p.done or w is None or w.dead:
            return
        w.ping_n += 1
        n = w.ping_n
        self._send(w, W.encode({"t": "ping", "n": n, "jobs": [p.id]}))
        probe = max(0.25, min(self.cancel_grace_s, 2.0))
        p.deadline = self._loop.call_later(probe, self._probe_check, p, w, n)  # type: ignore[union-attr]

    def _probe_check(self, p: _P, w: _W, n: int) -> None:
        p.deadline = None
        if p.done or w.dead:
            return
        if w.pong_n >= n:  # the loop is alive and still runs the job (started late): check again later
            to = p.infra.agent_timeout_s or 0.0
            p.deadline = self._loop.call_later(to + self.cancel_grace_s + 0.1, self._deadline, p)  # type: ignore[union-attr]
            return
        w.stuck_job = p.id
        self._kill(w, f"agent '{p.job.spec.name}' blocked its event loop past its {p.infra.agent_timeout_s}s "
                      f"timeout and {self.cancel_grace_s}s grace")

    def _watch(self) -> None:
        """Periodic liveness check: kill workers silent for ``heartbeat_timeout_s``."""
        self._watchdog = None
        if not self._running or self._closing or self._loop is None:
            return
        period = self.heartbeat_timeout_s / 4
        now = time.monotonic()
        late = now - self._watch_due
        self._watch_due = now + period
        self._watchdog = self._loop.call_later(period, self._watch)
        self._on_readable()  # frames that waited in the socket count as signs of life
        if late > self.heartbeat_timeout_s / 2:
            # this process itself was stalled (SIGSTOP, a long sync call): nobody can be judged silent
            for w in self._slots:
                if w is not None:
                    w.last_seen = now
            return
        for w in self._slots:
            if w is None or w.dead or not w.ready:
                continue
            silent = now - w.last_seen
            if silent > self.heartbeat_timeout_s:
                self._kill(w, f"it sent no heartbeat for {silent:.1f}s (heartbeat_timeout_s="
                              f"{self.heartbeat_timeout_s}): the process is stopped or wedged")

    def _on_exit(self, w: _W) -> None:
        loop = self._loop
        if w.reader:
            loop.remove_reader(w.proc.sentinel)  # type: ignore[union-attr]
            w.reader = False
        try:
            w.proc.join(1.0)
        except Exception:  # noqa: BLE001
            pass
        if w.dead:
            return
        w.dead = True
        code = w.proc.exitcode
        if w.kill_reason is not None:
            reason = f"worker {w.pid} was killed (SIGKILL) because {w.kill_reason}"
        else:
            reason = _describe_exit(w.pid, code)
        for suffix in (b"", b"/r", b"/h"):
            self._by_ident.pop(w.ident + suffix, None)
        for t in list(w.req_tasks.values()):
            t.cancel()
        if w.ready_fut is not None and not w.ready_fut.done():
            w.ready_fut.set_exception(RuntimeError(f"{reason} before it connected"))
            w.ready_fut.exception()
        now = time.monotonic()
        for p in list(w.inflight.values()):
            if p.done:
                continue
            if p.unsent:
                p.worker = None
                self._queue.appendleft(p)  # never reached the worker: safe to run elsewhere
                continue
            to = p.infra.agent_timeout_s
            if p.id == w.stuck_job or (w.kill_reason is not None and to is not None and now - p.sent_at >= to):
                err = f"timeout after {to}s"  # the API's text for an agent that timed out, however it ended
            elif (p.attempts <= self.idempotent_retries and not self._closing
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
            self._resolve(p, AgentRun(None, err, (now - p.sent_at) * 1000.0))
        w.inflight.clear()
        w.out.clear()
        if self._closing or not self._running:
            return
        log.warning("ProcessExecutor: %s", reason)
        rt = self._restart_times
        rt.append(now)
        while rt and now - rt[0] > self.restart_period_s:
            rt.popleft()
        self._causes.append(reason)
        if len(rt) > self.max_restarts:
            self._give_up()
            return
        self.restarts += 1
        try:
            self._spawn(w.index, w.gen + 1)
        except Exception as exc:  # noqa: BLE001
            self._causes.append(f"could not start a replacement worker: {exc}")
            self._give_up()
            return
        self._pump()

    def _requeue_lost(self, p: _P, reason: str) -> None:
        """Run a job lost with its worker again, elsewhere (idempotent agents only).

        Its results never reached the coordinator, so none of its state writes
        were applied; events it sent before the crash stay in the log.
        """
        log.warning("ProcessExecutor: re-running idempotent agent %r (attempt %d) after: %s",
                    p.job.spec.name, p.attempts + 1, reason)
        if p.deadline is not None:
            p.deadline.cancel()
            p.deadline = None
        if p.tasks:
            for t in p.tasks:
                t.cancel()
            p.tasks = None
        if p.objs:
            for oid in p.objs:
                self._unref(oid)
            p.objs = None
        p.attempts += 1
        p.worker = None
        p.unsent = True
        self._queue.appendleft(p)

    def _give_up(self) -> None:
        causes = list(self._causes[-(self.max_restarts + 1):])
        err = SupervisorGaveUp(self.max_restarts, self.restart_period_s, causes)
        self._gave_up = err
        log.error("ProcessExecutor: %s", err)
        for p in list(self._pending.values()):
            self._resolve(p, None, err)
        self._queue.clear()
        for w in self._slots:
            if w is not None and not w.dead:
                self._kill(w, "the supervisor gave up")

    # test / diagnostics hooks -----------------------------------------------------------------------------------------
    def _send_raw(self, index: int, frames: list[bytes]) -> None:
        """Send raw frames to worker ``index`` (tests inject malformed frames with this)."""
        w = self._slots[index]
        if w is None or w.dead:
            raise RuntimeError(f"worker {index} is not running")
        self._send(w, frames)

    async def _ping(self, index: int, timeout_s: float = 5.0) -> int:
        """Ping worker ``index``; returns how many frames it has rejected so far.

        Raises:
            TimeoutError: no pong within ``timeout_s``.
        """
        w = self._slots[index]
        if w is None or w.dead:
            raise RuntimeError(f"worker {index} is not running")
        w.ping_n += 1
        n = w.ping_n
        self._send(w, W.encode({"t": "ping", "n": n}))
        deadline = time.monotonic() + timeout_s
        while w.pong_n < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {w.pid} did not answer a ping within {timeout_s}s")
            await asyncio.sleep(0.005)
        return w.rejected


def _safe_ret(r: dict[str, Any]) -> dict[str, Any]:
    try:
        orjson.dumps(r)
        return r
    except TypeError:
        bad = W.find_unserializable(r.get("ok"), "$.result") or ("$.result", "not JSON-serializable")
        return {"rid": r["rid"], "err": {"type": "ToolError",
                                         "msg": f"SerializationError: the tool result cannot be sent to the worker: "
                                                f"{bad[0]}: {bad[1]}"}}


def _infra_collected(exref: "weakref.ref[ProcessExecutor]", e: _Cached, _ref: Any) -> None:
    """Weakref callback: a ``SharedInfra`` was collected (may run in any thread: only a deque append)."""
    ex = exref()
    if ex is not None:
        ex._collected.append(e)


_DIR_PREFIX = "carmulti-zmq-"


def _sweep_stale_dirs() -> list[str]:
    """Remove ``ipc://`` directories left by coordinators that died without cleaning up (e.g. kill -9).

    A directory is stale when its ``coordinator`` socket refuses connections
    (nobody listens), or when it has no socket and is more than a minute old.

    Returns:
        The directories removed.
    """
    import socket as _socket

    tmp = tempfile.gettempdir()
    removed = []
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(_DIR_PREFIX)]
    except OSError:
        return removed
    for n in names:
        d = os.path.join(tmp, n)
        sock_path = os.path.join(d, "coordinator")
        stale = False
        try:
            if os.path.exists(sock_path):
                s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                try:
                    s.connect(sock_path)
                except ConnectionRefusedError:
                    stale = True
                except OSError:
                    stale = False
                finally:
                    s.close()
            else:
                stale = time.time() - os.stat(d).st_mtime > 60
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("ProcessExecutor removed stale ipc directories: %s", removed)
    return removed


def _reap(pid: int | None, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for child ``pid`` to exit, then SIGKILL and reap it: never blocks forever."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            return
        time.sleep(0.01)


def _stop_helpers() -> None:
    """Stop multiprocess's resource tracker / fork server if we started them (they are our children).

    Bounded: each gets its "alive" pipe closed and 5 s to exit, then SIGKILL.
    """
    try:
        from multiprocess import forkserver, resource_tracker
    except ImportError:  # pragma: no cover
        return
    if "forkserver" in _OWNED_HELPERS:
        _OWNED_HELPERS.discard("forkserver")
        fs = forkserver._forkserver
        try:
            from multiprocess import util

            with fs._lock:
                pid, fd, addr = fs._forkserver_pid, fs._forkserver_alive_fd, fs._forkserver_address
                fs._forkserver_pid = fs._forkserver_alive_fd = fs._forkserver_address = None
                if fd is not None:
                    os.close(fd)
            _reap(pid, 5.0)
            if addr and not util.is_abstract_socket_namespace(addr):
                os.unlink(addr)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    if "tracker" in _OWNED_HELPERS:
        _OWNED_HELPERS.discard("tracker")
        rt = resource_tracker._resource_tracker
        try:
            with rt._lock:
                pid, fd = rt._pid, rt._fd
                rt._pid = rt._fd = None
                if fd is not None:
                    os.close(fd)
            _reap(pid, 5.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _atexit() -> None:
    """Interpreter exit: kill the workers of every executor never closed (naming it), then the helpers."""
    for ex in list(_LIVE):
        log.warning("ProcessExecutor(workers=%d) was never closed (worker pids %s); killing its workers at "
                    "interpreter exit (call `await infra.aclose()` or `await executor.aclose()`, or use `async with`)",
                    ex.workers, ex.pids)
        try:
            ex._kill_now()
        except Exception:  # noqa: BLE001
            pass
        _LIVE.discard(ex)
    _stop_helpers()
