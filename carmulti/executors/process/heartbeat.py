"""A worker's heartbeat thread and the CURVE set-up of its sockets (see :mod:`.worker`)."""

from __future__ import annotations

import threading
from typing import Any

import zmq

from . import wire

__all__ = ["heartbeat", "secure"]


def secure(sock: Any, curve: dict[str, str] | None) -> None:
    """Make ``sock`` a CURVE client of the coordinator (TCP transports), when keys were given."""
    if curve:
        sock.curve_serverkey = curve["server_public"].encode()
        sock.curve_publickey = curve["public"].encode()
        sock.curve_secretkey = curve["secret"].encode()


def heartbeat(ctx: Any, ident: bytes, endpoint: str, interval_s: float, stop: threading.Event,
               curve: dict[str, str] | None = None) -> None:
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
        secure(sock, curve)
        sock.connect(endpoint)
        frame = wire.encode({"t": "hb"})
        while True:
            try:
                sock.send_multipart(frame, zmq.NOBLOCK)
            except zmq.Again:  # the coordinator is behind: it still has beats to read
                pass
            if stop.wait(interval_s):
                return
    finally:
        sock.close(linger=0)
