"""How worker processes are started and ended: the launcher a supervisor uses.

Owns the two sides of a worker's process life that differ by where it runs:
:class:`WorkerProcessHandle` (its pid, whether it lives, how its end is
noticed, how it is killed and reaped, how its end is described) and
:class:`Launcher` (how one is started). :class:`MultiprocessLauncher` starts
local processes with ``multiprocess`` (``spawn``/``forkserver``; never
``fork``) and reaps multiprocess's helper processes with a bound; the Ray
executor has its own launcher (actors). The supervisor never knows which.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, Callable, Protocol

__all__ = ["Launcher", "MultiprocessLauncher", "WorkerProcessHandle", "describe_exit", "stop_helpers"]

_OWNED_HELPERS: set[str] = set()  # multiprocess helper processes we started ("tracker", "forkserver")


class WorkerProcessHandle(Protocol):
    """One started worker process, wherever it runs."""

    pid: int | None  # None until known (a remote process says it in its hello)

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` on ``loop`` once, when the process ends."""
        ...

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop watching (idempotent)."""
        ...

    def alive(self) -> bool:
        """Whether it still runs, as far as this process knows."""
        ...

    def kill(self) -> None:
        """End it now (SIGKILL, or the equivalent); its end is then noticed by :meth:`watch`."""
        ...

    def reap(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for it to be gone and release what it holds."""
        ...

    def exit_reason(self, pid: int | None) -> str:
        """How it ended, for error outputs: ``worker {pid} died (SIGKILL)``, ..."""
        ...


class Launcher(Protocol):
    """Starts worker processes for a supervisor."""

    def prepare(self) -> None:
        """Before the first launch (contexts, bookkeeping)."""
        ...

    def launch(self, cfg: dict[str, Any], name: str) -> WorkerProcessHandle:
        """Start one worker running ``worker.WorkerProcess(cfg).main()``."""
        ...

    def release(self, last: bool) -> None:
        """The executor is closed (``last``: no other executor of this process runs)."""
        ...


class MultiprocessHandle:
    """A worker in a local process started by ``multiprocess``; its end is seen on its sentinel."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self._watching = False
        self._exitcode: int | None = None
        self._closed = False

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        loop.add_reader(self.proc.sentinel, on_exit)
        self._watching = True

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watching and not loop.is_closed():
            loop.remove_reader(self.proc.sentinel)
        self._watching = False

    def alive(self) -> bool:
        return not self._closed and self.proc.exitcode is None

    def kill(self) -> None:
        if self._closed:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
        except (ProcessLookupError, TypeError):
            pass

    def reap(self, timeout_s: float) -> None:
        if self._closed:
            return
        try:
            self.proc.join(timeout_s)
            code = self.proc.exitcode
            if code is not None:
                self._exitcode = code
                self.proc.close()
                self._closed = True
        except Exception:  # noqa: BLE001 - best effort
            pass

    def exit_reason(self, pid: int | None) -> str:
        return describe_exit(pid, self._exitcode if self._closed else self.proc.exitcode)


class MultiprocessLauncher:
    """Local worker processes (``multiprocess``, ``spawn`` or ``forkserver``)."""

    def __init__(self, start_method: str) -> None:
        self.start_method = start_method
        self.mp: Any = None

    def prepare(self) -> None:
        import multiprocess
        from multiprocess import forkserver, resource_tracker

        self.mp = multiprocess.get_context(self.start_method)
        if getattr(resource_tracker._resource_tracker, "_fd", None) is None:
            _OWNED_HELPERS.add("tracker")
        if self.start_method == "forkserver" and getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            _OWNED_HELPERS.add("forkserver")

    def launch(self, cfg: dict[str, Any], name: str) -> MultiprocessHandle:
        from . import worker

        proc = self.mp.Process(target=worker.main, args=(cfg,), name=name, daemon=True)
        proc.start()
        return MultiprocessHandle(proc)

    def release(self, last: bool) -> None:
        if last:
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


