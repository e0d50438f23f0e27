"""Supervision of the process executor's workers: spawn, liveness, death, restart, exit.

Owns the worker processes' lives: :class:`WorkerHandle` (the coordinator's
record of one worker), :class:`WorkerSupervisor` (spawning with ``multiprocess``
``spawn``/``forkserver``, the checked hello, heartbeats, killing, noticing a
death by the process sentinel, OTP restart intensity and giving up with
:class:`~carmulti.WorkerPoolGaveUp`), and the process-wide safety nets:
workers of an executor never closed are killed at interpreter exit (with a
warning naming it), multiprocess's helper processes are reaped with a bound,
and ``ipc://`` directories of dead coordinators are swept.

What happens to the jobs a dead worker held is the scheduler's decision
(:meth:`.scheduling.Scheduler.on_worker_lost`).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any, Callable, Protocol

from ...errors import WorkerPoolGaveUp
from . import wire
from .records import ProcessConfig, RunState, WorkerHandle
from .transport import DIR_PREFIX, Transport

__all__ = ["WorkerSupervisor", "sweep_stale_dirs"]

log = logging.getLogger("carmulti.executors.process")


class Owner(Protocol):
    """What the exit safety net needs of a running executor."""

    workers: int

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
_OWNED_HELPERS: set[str] = set()  # multiprocess helper processes we started ("tracker", "forkserver")
_ATEXIT = False


class WorkerSupervisor:
    """Spawns, watches and replaces the executor's workers.

    Args:
        config: The executor's settings.
        state: Shared running/closing flags and the event loop.
        transport: The coordinator's socket (endpoint, sending, reading, rejects).
        owner: The executor (killed at interpreter exit if never closed).
        on_ready: A worker said hello: jobs may flow.
        on_lost: A worker died: ``(worker, reason)``; decides the fate of its jobs.
        on_give_up: The pool stopped: fail every waiting job with this error.
    """

    def __init__(self, config: ProcessConfig, state: RunState, transport: Transport, owner: Owner, *,
                 on_ready: Callable[[], None], on_lost: Callable[[WorkerHandle, str], None],
                 on_give_up: Callable[[BaseException], None]) -> None:
        self.config = config
        self.state = state
        self.transport = transport
        self.owner = owner
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_give_up = on_give_up
        self.mp: Any = None
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
        """Pids of the live workers, in slot order."""
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
        import multiprocess

        c = self.config
        self.mp = multiprocess.get_context(c.start_method)
        self._note_helpers()
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
                raise RuntimeError(f"ProcessExecutor could not start: {f.exception()}")
        if pending:
            raise RuntimeError(f"ProcessExecutor could not start: {len(pending)} of {c.workers} workers did not "
                               f"connect within {c.startup_timeout_s}s")
        period = c.heartbeat_timeout_s / 4
        self._watch_due = time.monotonic() + period
        self._watchdog = self.state.loop.call_later(period, self._watch)  # type: ignore[union-attr]

    def _note_helpers(self) -> None:
        """Remember whether multiprocess's resource tracker / fork server were running before us."""
        from multiprocess import forkserver, resource_tracker

        if getattr(resource_tracker._resource_tracker, "_fd", None) is None:
            _OWNED_HELPERS.add("tracker")
        if self.config.start_method == "forkserver" and getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            _OWNED_HELPERS.add("forkserver")

    def spawn(self, index: int, gen: int) -> WorkerHandle:
        """Start worker ``index`` (generation ``gen``) and watch its exit."""
        from . import worker

        c = self.config
        cfg = {"endpoint": self.transport.endpoint, "index": index, "gen": gen, "hwm": c.hwm,
               "max_frame_bytes": c.max_frame_bytes, "batch_size": c.batch_size,
               "cancel_grace_s": c.cancel_grace_s, "rpc_timeout_s": c.rpc_timeout_s,
               "gc_freeze": c.gc_freeze, "heartbeat_interval_s": c.heartbeat_timeout_s / 5}
        proc = self.mp.Process(target=worker.main, args=(cfg,), name=f"carmulti-worker-{index}.{gen}", daemon=True)
        proc.start()
        w = WorkerHandle(index, gen, proc)
        loop = self.state.loop
        w.ready_fut = loop.create_future()  # type: ignore[union-attr]
        loop.add_reader(proc.sentinel, self.on_exit, w)  # type: ignore[union-attr]
        w.watching_exit = True
        self.slots[index] = w
        self.all.append(w)
        for suffix in (b"", b"/r", b"/h"):
            self.by_ident[w.ident + suffix] = w
        return w

    def on_hello(self, w: WorkerHandle, body: dict[str, Any]) -> None:
        """A worker connected: check it is the process we spawned, then let jobs flow to it."""
        spawned = w.proc.pid
        if body["pid"] != spawned or body["index"] != w.index or body["gen"] != w.gen or w.ready:
            # never trust a pid from the wire: a process that took this identity must not
            # make aclose() kill whatever pid it names
            self.transport.reject(w, f"hello with pid {body['pid']} index {body['index']} gen {body['gen']} does not "
                               f"match the worker spawned as pid {spawned} (index {w.index}, gen {w.gen}); ignored")
            return
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
        """SIGKILL ``w``; its exit (seen by the sentinel) fails or re-runs its jobs, naming ``reason``."""
        if w.dead or w.kill_reason is not None:
            return
        w.kill_reason = reason
        log.warning("ProcessExecutor: killing worker %s: %s", w.pid, reason)
        try:
            os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
        except (ProcessLookupError, TypeError):
            pass

    # -- death ------------------------------------------------------------------------------------------------------
    def on_exit(self, w: WorkerHandle) -> None:
        """The worker's process ended: hand its jobs to the scheduler, then restart it or give up."""
        st = self.state
        if w.watching_exit:
            st.loop.remove_reader(w.proc.sentinel)  # type: ignore[union-attr]
            w.watching_exit = False
        try:
            w.proc.join(1.0)
        except Exception:  # noqa: BLE001
            pass
        if w.dead:
            return
        w.dead = True
        if w.kill_reason is not None:
            reason = f"worker {w.pid} was killed (SIGKILL) because {w.kill_reason}"
        else:
            reason = describe_exit(w.pid, w.proc.exitcode)
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
        """Ask ready workers to stop; wait ``shutdown_timeout_s``; then :meth:`kill_all`."""
        for w in self.slots:
            if w is not None and not w.dead and w.ready:
                self.transport.send(w, wire.encode({"t": "stop"}))
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while any(not w.dead for w in self.all) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def kill_all(self) -> None:
        """SIGKILL what is left, stop watching, reap (each join bounded)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        loop = self.state.loop
        for w in self.all:
            if w.proc is not None and w.proc.exitcode is None:
                try:
                    os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
                except (ProcessLookupError, TypeError):
                    pass
        for w in self.all:
            if w.watching_exit and loop is not None and not loop.is_closed():
                loop.remove_reader(w.proc.sentinel)
            w.watching_exit = False
            w.dead = True
            try:
                w.proc.join(5.0)
                w.proc.close()
            except Exception:  # noqa: BLE001
                pass

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL and reap every worker."""
        for w in self.all:
            try:
                if w.proc.exitcode is None:
                    os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
                w.proc.join(2.0)
            except Exception:  # noqa: BLE001
                pass

    def forget_owner(self) -> None:
        """The executor is closed: stop the helper processes once no other executor runs."""
        _LIVE.discard(self.owner)
        if not any(e.running and e is not self.owner for e in list(_LIVE)):
            stop_helpers()


def describe_exit(pid: int | None, code: int | None) -> str:
    """``worker {pid} died (SIGNAME)`` / ``worker {pid} exited with code {n}``."""
    if code is None:
        return f"worker {pid} died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {pid} died ({name})"
    return f"worker {pid} exited with code {code}"


# -- process-wide safety nets -----------------------------------------------------------------------------------------

def sweep_stale_dirs() -> list[str]:
    """Remove ``ipc://`` directories left by coordinators that died without cleaning up (e.g. kill -9).

    A directory is stale when its ``coordinator`` socket refuses connections
    (nobody listens), or when it has no socket and is more than a minute old.

    Returns:
        The directories removed.
    """
    tmp = tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(DIR_PREFIX)]
    except OSError:
        return removed
    for n in names:
        d = os.path.join(tmp, n)
        sock_path = os.path.join(d, "coordinator")
        stale = False
        try:
            if os.path.exists(sock_path):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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


def stop_helpers() -> None:
    """Stop multiprocess's resource tracker / fork server if we started them (they are our children).

    Bounded: each gets its "alive" pipe closed and 5 s to exit, then SIGKILL.
    """
    try:
        from multiprocess import forkserver, resource_tracker, util
    except ImportError:  # pragma: no cover
        return
    if "forkserver" in _OWNED_HELPERS:
        _OWNED_HELPERS.discard("forkserver")
        fs = forkserver._forkserver
        try:
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
    stop_helpers()
