"""The coordinator's socket: one ZeroMQ ROUTER that every worker's DEALERs connect to.

Owns the socket's life (``ipc://`` in a private temporary directory; ``ROUTER_MANDATORY``,
explicit high-water marks, ``LINGER`` 0, ``MAXMSGSIZE`` = ``max_frame_bytes`` plus
slack), sending (a message that meets the high-water mark waits in the worker's
backlog and is retried; never dropped), receiving (driven by ``loop.add_reader``;
every wake-up drains all ready messages and hands each to a dispatch callback),
flushing once per loop iteration, and counting/logging rejected frames
(rate-limited: a flood logs a few lines).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, Callable

import zmq

from . import wire
from .records import ProcessConfig, RunState, WorkerHandle

__all__ = ["DIR_PREFIX", "Transport", "sweep_stale_dirs"]

log = logging.getLogger("carmulti.executors.process")

#: Prefix of the private ``ipc://`` directories (swept when their coordinator died).
DIR_PREFIX = "carmulti-zmq-"


class Transport:
    """Sends frames to workers and dispatches what they send.

    Args:
        config: The executor's settings.
        state: Shared running/closing flags and the event loop.
        lookup: The worker a peer identity belongs to (``None``: unknown peer).
        dispatch: Handles one message ``(worker, frames without identity, identity)``;
            returns True when it carried results (then ``after_results`` runs once per wake-up).
        flush: Sends what the parts buffered (called once per loop iteration).
        after_results: Called after a wake-up that delivered results.
    """

    def __init__(self, config: ProcessConfig, state: RunState, *,
                 lookup: Callable[[bytes], WorkerHandle | None],
                 dispatch: Callable[[WorkerHandle, list[bytes], bytes], bool],
                 flush: Callable[[], None], after_results: Callable[[], None]) -> None:
        self.config = config
        self.state = state
        self._lookup = lookup
        self._dispatch = dispatch
        self._flush_cb = flush
        self._after_results = after_results
        self.ctx: zmq.Context[Any] | None = None
        self.sock: zmq.Socket[Any] | None = None
        self.dir: str | None = None
        self.endpoint: str | None = None
        self.rejected_frames = 0
        self._reject_logged = 0
        self._flush_scheduled = False
        self._read_scheduled = False

    # -- life -------------------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the ROUTER on a fresh ``ipc://`` endpoint and start reading."""
        self.dir = tempfile.mkdtemp(prefix=DIR_PREFIX)
        self.endpoint = f"ipc://{self.dir}/coordinator"
        self._router().bind(self.endpoint)
        self._start_reading()

    def _router(self) -> "zmq.Socket[Any]":
        """A fresh ROUTER with the executor's options (not bound yet)."""
        ctx = self.ctx = zmq.Context()
        sock = self.sock = ctx.socket(zmq.ROUTER)
        c = self.config
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, c.hwm)
        sock.setsockopt(zmq.RCVHWM, c.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, c.max_frame_bytes + wire.SOCKET_SLACK)  # bigger: the sender is cut off
        return sock

    def _start_reading(self) -> None:
        self.state.loop.add_reader(self.sock.FD, self.on_readable)  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop reading, close the socket, end the context (bounded), remove the directory."""
        loop = self.state.loop
        if self.sock is not None:
            if loop is not None and not loop.is_closed():
                try:
                    loop.remove_reader(self.sock.FD)
                except Exception:  # noqa: BLE001
                    pass
            self.sock.close(linger=0)
            self.sock = None
        if self.ctx is not None:
            ctx, self.ctx = self.ctx, None
            t = threading.Thread(target=ctx.term, name="carmulti-zmq-term", daemon=True)
            t.start()
            t.join(5.0)
            if t.is_alive():
                log.error("zmq Context.term() did not finish within 5s")
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def close_now(self) -> None:
        """Synchronous close (interpreter exit: no loop to use)."""
        try:
            if self.sock is not None:
                self.sock.close(linger=0)
                self.sock = None
            if self.ctx is not None:
                self.ctx.term()
                self.ctx = None
        except Exception:  # noqa: BLE001
            pass
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def peer_dir(self) -> str | None:
        """Where workers bind their peer sockets (``ipc://``, the direct mailbox path), or ``None``."""
        return self.dir if self.endpoint is not None and self.endpoint.startswith("ipc://") else None

    def client_options(self) -> dict[str, Any]:
        """What a worker needs, beside the endpoint, to connect (nothing for ``ipc://``)."""
        return {}

    # -- sending ----------------------------------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        """Flush at the end of this loop iteration (once, however many parts ask)."""
        loop = self.state.loop
        if not self._flush_scheduled and loop is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.sock is not None:
            self._flush_cb()

    def flush_now(self) -> None:
        """Flush at once, without waiting for the loop (the first frames of a big submission)."""
        if self.sock is not None:
            self._flush_cb()

    def send(self, w: WorkerHandle, frames: list[bytes]) -> None:
        """Send one message to ``w`` now, or queue it behind ``w``'s backlog (never dropped while ``w`` lives)."""
        sock = self.sock
        if sock is None or w.dead:
            return
        if w.backlog:
            w.backlog.append(frames)
            return
        try:
            sock.send_multipart([w.ident, *frames], zmq.NOBLOCK)
        except zmq.Again:
            w.backlog.append(frames)
            self.state.loop.call_later(0.005, self._drain_backlog, w)  # type: ignore[union-attr]
            return
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # the worker is gone; its sentinel fails its agents
                log.warning("worker %s unreachable (%s); its agents fail when its exit is seen", w.pid, exc)
                return
            raise
        self.schedule_read()

    def send_to_identity(self, ident: bytes, frames: list[bytes]) -> None:
        """Send right away to one socket of a worker (synchronous RPC replies); errors are logged."""
        try:
            self.sock.send_multipart([ident, *frames], zmq.NOBLOCK)  # type: ignore[union-attr]
        except zmq.ZMQError as exc:
            log.warning("reply to worker socket %r failed: %s", ident, exc)
        self.schedule_read()

    def _drain_backlog(self, w: WorkerHandle) -> None:
        sock = self.sock
        while w.backlog and sock is not None and not w.dead:
            try:
                sock.send_multipart([w.ident, *w.backlog[0]], zmq.NOBLOCK)
            except zmq.Again:
                self.state.loop.call_later(0.005, self._drain_backlog, w)  # type: ignore[union-attr]
                return
            except zmq.ZMQError:
                w.backlog.clear()
                return
            w.backlog.popleft()
        self.schedule_read()

    # -- receiving --------------------------------------------------------------------------------------------------
    def schedule_read(self) -> None:
        """Read at the end of this loop iteration (a send may consume the socket FD's edge)."""
        loop = self.state.loop
        if not self._read_scheduled and loop is not None:
            self._read_scheduled = True
            loop.call_soon(self.on_readable)

    def on_readable(self) -> None:
        """Drain every ready message; each from a known worker goes to ``dispatch``."""
        self._read_scheduled = False
        sock = self.sock
        if sock is None:
            return
        got_results = False
        lookup = self._lookup
        try:
            while wire.has_input(sock):
                frames = sock.recv_multipart(zmq.NOBLOCK)
                w = lookup(frames[0])
                if w is None or w.dead:
                    self.reject(None, f"frame from unknown peer {frames[0][:32]!r}")
                    continue
                w.last_seen = time.monotonic()
                if self._dispatch(w, frames[1:], frames[0]):
                    got_results = True
        except zmq.Again:
            pass
        if got_results:
            self._after_results()

    def reject(self, w: WorkerHandle | None, why: str, *, count: bool = True) -> None:
        """Count (``rejected_frames``) and log a rejected frame; a flood logs a few lines, not one per frame."""
        if count:
            self.rejected_frames += 1
        self._reject_logged += 1
        n = self._reject_logged
        if n <= 3 or n % 1000 == 0:
            src = f"worker {w.pid}" if w is not None else "a peer"
            log.warning("ProcessExecutor rejected a frame from %s (%d rejected so far; logging the first 3 and "
                        "every 1000th): %s", src, n, why)


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
