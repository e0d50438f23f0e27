"""Supervision of the process executor's workers: spawn, hello, liveness, death, restart, exit.

Owns the worker processes' lives, whoever starts them (a :class:`.launching.Launcher`:
local processes, or Ray actors): spawning with a per-spawn nonce that the
worker's hello must echo (a process that took a worker's identity cannot pass
for it, nor make ``aclose`` kill a pid it names), heartbeats (a worker silent
for ``heartbeat_timeout_s`` is killed), noticing a death, OTP restart
intensity and giving up with :class:`~carmulti.WorkerPoolGaveUp`; and the
process-wide safety net: workers of an executor never closed are killed at
interpreter exit, with a warning naming it.

What happens to the jobs a dead worker held is the scheduler's decision
(``on_lost`` callback).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import secrets
import time
from typing import Any, Callable, Protocol

from ...errors import WorkerPoolGaveUp
from . import wire
from .launching import Launcher, stop_helpers
from .records import ProcessConfig, RunState, WorkerHandle
from .transport import Transport

__all__ = ["Owner", "WorkerSupervisor"]

log = logging.getLogger("carmulti.executors.process")


class Owner(Protocol):
    """What the exit safety net needs of a running executor."""

    @property
    def label(self) -> str:
        """How to name it in a warning: ``ProcessExecutor(workers=2)``."""
        ...

    @property
    def pids(self) -> list[int]:
        """Pids of its live workers."""
        ...

    @property
    def running(self) -> bool:
        """Whether it runs."""
        ...

    def _kill_now(self) -> None:
        """Kill its workers and close its socket, synchronously."""
        ...


#: Running executors, held strongly: an executor the program dropped without closing must still
#: have its workers killed at interpreter exit (a weak set let it be collected while its workers
#: kept multiprocess's resource tracker alive, and exit then waited for the tracker forever).
_LIVE: set[Owner] = set()
_ATEXIT = False


class WorkerSupervisor:
    """Spawns, watches and replaces the executor's workers.

    Args:
        config: The executor's settings.
        state: Shared running/closing flags and the event loop.
        transport: The coordinator's socket (endpoint, sending, reading, rejects).
        launcher: Starts worker processes (local processes, Ray actors, ...).
        owner: The executor (killed at interpreter exit if never closed).
        on_ready: A worker said hello: jobs may flow.
        on_lost: A worker died: ``(worker, reason)``; decides the fate of its jobs.
        on_give_up: The pool stopped: fail every waiting job with this error.
        worker_options: Extra settings every worker gets (e.g. where its budget lives).
    """

    def __init__(self, config: ProcessConfig, state: RunState, transport: Transport, launcher: Launcher,
                 owner: Owner, *, on_ready: Callable[[], None], on_lost: Callable[[WorkerHandle, str], None],
                 on_give_up: Callable[[BaseException], None], worker_options: dict[str, Any] | None = None) -> None:
        self.config = config
        self.state = state
        self.transport = transport
        self.launcher = launcher
        self.owner = owner
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_give_up = on_give_up
        self.worker_options = dict(worker_options or {})
        self.slots: list[WorkerHandle | None] = [None] * config.workers
        self.all: list[WorkerHandle] = []
        self.by_ident: dict[bytes, WorkerHandle] = {}
        self.restarts = 0
        self.restart_times: collections.deque[float] = collections.deque()
        self.causes: list[str] = []
        self.gave_up: WorkerPoolGaveUp | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_due = 0.0

    @property
    def pids(self) -> list[int]:
        """Pids of the live workers, in slot order (a remote worker's once its hello arrived)."""
        return [w.pid for w in self.slots if w is not None and not w.dead and w.pid is not None]

    def ready(self) -> list[WorkerHandle]:
        """Workers that said hello and are alive."""
        return [w for w in self.slots if w is not None and w.ready and not w.dead]

    # -- start ------------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn every worker and wait for each hello (``startup_timeout_s``).

        Raises:
            RuntimeError: a worker died before connecting, or not every worker
                connected in time.
        """
        global _ATEXIT
        c = self.config
        self.launcher.prepare()
        _LIVE.add(self.owner)
        if not _ATEXIT:
            atexit.register(_atexit)
            _ATEXIT = True
        for i in range(c.workers):
            self.spawn(i, 0)
        futs = [w.ready_fut for w in self.slots if w is not None and w.ready_fut is not None]
        done, pending = await asyncio.wait(futs, timeout=c.startup_timeout_s)
        for f in done:
            if f.exception() is not None:
                raise RuntimeError(f"{self.owner.label} could not start: {f.exception()}")
        if pending:
            raise RuntimeError(f"{self.owner.label} could not start: {len(pending)} of {c.workers} workers did not "
                               f"connect to {self.transport.endpoint} within {c.startup_timeout_s}s")
        period = c.heartbeat_timeout_s / 4
        self._watch_due = time.monotonic() + period
        self._watchdog = self.state.loop.call_later(period, self._watch)  # type: ignore[union-attr]

    def spawn(self, index: int, gen: int) -> WorkerHandle:
        """Start worker ``index`` (generation ``gen``) and watch its end."""
        c = self.config
        nonce = secrets.token_hex(16)
        cfg = {"endpoint": self.transport.endpoint, "index": index, "gen": gen, "hwm": c.hwm,
               "max_frame_bytes": c.max_frame_bytes, "batch_size": c.batch_size,
               "cancel_grace_s": c.cancel_grace_s, "rpc_timeout_s": c.rpc_timeout_s,
               "gc_freeze": c.gc_freeze, "heartbeat_interval_s": c.heartbeat_timeout_s / 5, "nonce": nonce,
               "peer_dir": self.transport.peer_dir(),
               **self.transport.client_options(), **self.worker_options}
        proc = self.launcher.launch(cfg, f"carmulti-worker-{index}.{gen}")
        w = WorkerHandle(index, gen, proc, nonce)
        loop = self.state.loop
        w.ready_fut = loop.create_future()  # type: ignore[union-attr]
        proc.watch(loop, lambda: self.on_exit(w))  # type: ignore[arg-type]
        self.slots[index] = w
        self.all.append(w)
        for suffix in (b"", b"/r", b"/h"):
            self.by_ident[w.ident + suffix] = w
        return w

    def on_hello(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        """A worker connected: check it is the process we spawned, then let jobs flow to it."""
        known = w.proc.pid
        if (body["nonce"] != w.nonce or body["index"] != w.index or body["gen"] != w.gen or w.ready
                or (known is not None and body["pid"] != known)):
            # never trust a hello we cannot tie to our spawn: a process that took this identity
            # must not make aclose() kill whatever pid it names
            self.transport.reject(w, f"hello with pid {body['pid']} index {body['index']} gen {body['gen']} does "
                                     f"not match the worker spawned as {known or 'a remote process'} (index "
                                     f"{w.index}, gen {w.gen}) or its nonce; ignored")
            return
        w.pid = body["pid"]
        w.ready = True
        w.last_seen = time.monotonic()
        if w.ready_fut is not None and not w.ready_fut.done():
            w.ready_fut.set_result(None)
        self._on_ready()

    # -- liveness ---------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Periodic liveness check: kill workers silent for ``heartbeat_timeout_s``."""
        self._watchdog = None
        st = self.state
        if not st.running or st.closing or st.loop is None:
            return
        timeout = self.config.heartbeat_timeout_s
        period = timeout / 4
        now = time.monotonic()
        late = now - self._watch_due
        self._watch_due = now + period
        self._watchdog = st.loop.call_later(period, self._watch)
        self.transport.on_readable()  # frames that waited in the socket count as signs of life
        if late > timeout / 2:
            # this process itself was stalled (SIGSTOP, a long sync call): nobody can be judged silent
            for w in self.slots:
                if w is not None:
                    w.last_seen = now
            return
        for w in self.slots:
            if w is None or w.dead or not w.ready:
                continue
            silent = now - w.last_seen
            if silent > timeout:
                self.kill(w, f"it sent no heartbeat for {silent:.1f}s (heartbeat_timeout_s={timeout}): the process "
                             "is stopped or wedged")

    def kill(self, w: WorkerHandle, reason: str) -> None:
        """Kill ``w``; its end (seen by the launcher's watch) fails or re-runs its jobs, naming ``reason``."""
        if w.dead or w.kill_reason is not None:
            return
        w.kill_reason = reason
        log.warning("ProcessExecutor: killing worker %s: %s", w.pid, reason)
        w.proc.kill()

    # -- death ------------------------------------------------------------------------------------------------------
    def on_exit(self, w: WorkerHandle) -> None:
        """The worker's process ended: hand its jobs to the scheduler, then restart it or give up."""
        st = self.state
        if st.loop is not None:
            w.proc.unwatch(st.loop)
        w.proc.reap(1.0)
        if w.dead:
            return
        self.transport.on_readable()  # results it sent before it died count: read them before failing its jobs
        w.dead = True
        if w.kill_reason is not None:
            reason = f"worker {w.pid} was killed (SIGKILL) because {w.kill_reason}"
        else:
            reason = w.proc.exit_reason(w.pid)
        for suffix in (b"", b"/r", b"/h"):
            self.by_ident.pop(w.ident + suffix, None)
        for t in list(w.request_tasks.values()):
            t.cancel()
        if w.ready_fut is not None and not w.ready_fut.done():
            w.ready_fut.set_exception(RuntimeError(f"{reason} before it connected"))
            w.ready_fut.exception()
        self._on_lost(w, reason)
        if st.closing or not st.running:
            return
        log.warning("ProcessExecutor: %s", reason)
        now = time.monotonic()
        rt = self.restart_times
        rt.append(now)
        while rt and now - rt[0] > self.config.restart_period_s:
            rt.popleft()
        self.causes.append(reason)
        if len(rt) > self.config.max_restarts:
            self.give_up()
            return
        self.restarts += 1
        try:
            self.spawn(w.index, w.gen + 1)
        except Exception as exc:  # noqa: BLE001
            self.causes.append(f"could not start a replacement worker: {exc}")
            self.give_up()
            return
        self._on_ready()

    def give_up(self) -> None:
        """Stop the pool: every waiting agent and every later call gets :class:`~carmulti.WorkerPoolGaveUp`."""
        c = self.config
        err = WorkerPoolGaveUp(c.max_restarts, c.restart_period_s, list(self.causes[-(c.max_restarts + 1):]))
        self.gave_up = err
        log.error("ProcessExecutor: %s", err)
        self._on_give_up(err)
        for w in self.slots:
            if w is not None and not w.dead:
                self.kill(w, "the supervisor gave up")

    # -- stop -------------------------------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Ask ready workers to stop; wait ``shutdown_timeout_s`` for them to end."""
        for w in self.slots:
            if w is not None and not w.dead and w.ready:
                self.transport.send(w, wire.encode({"t": "stop"}))
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while any(w.proc.alive() for w in self.all) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def kill_all(self) -> None:
        """Kill what is left, stop watching, reap (each wait bounded)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        loop = self.state.loop
        for w in self.all:
            if w.proc.alive():
                w.proc.kill()
        for w in self.all:
            if loop is not None:
                w.proc.unwatch(loop)
            w.dead = True
            w.proc.reap(5.0)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): kill and reap every worker."""
        for w in self.all:
            try:
                if w.proc.alive():
                    w.proc.kill()
                w.proc.reap(2.0)
            except Exception:  # noqa: BLE001
                pass

    def forget_owner(self) -> None:
        """The executor is closed: release the launcher (helper processes once no other executor runs)."""
        _LIVE.discard(self.owner)
        self.launcher.release(not any(e.running and e is not self.owner for e in list(_LIVE)))


def _atexit() -> None:
    """Interpreter exit: kill the workers of every executor never closed (naming it), then the helpers."""
    for ex in list(_LIVE):
        log.warning("%s was never closed (worker pids %s); killing its workers at interpreter exit (call "
                    "`await infra.aclose()` or `await executor.aclose()`, or use `async with`)", ex.label, ex.pids)
        try:
            ex._kill_now()
        except Exception:  # noqa: BLE001
            pass
        _LIVE.discard(ex)
    stop_helpers()
