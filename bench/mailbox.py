"""Agent-to-agent ping-pong through mailboxes.

In-process: two agents of a parallel Swarm bounce a message ``--n`` times
through a :class:`carmulti.Mailbox`; the baseline bounces it through two bare
``asyncio.Queue`` objects.

Across processes: the same two agents on a ``ProcessExecutor(workers=2)``,
sharing the coordinator's mailbox; each inbox is hosted in its agent's worker
and messages go worker to worker directly (the coordinator is the directory). The baseline is two bare processes bouncing an int
over a ``multiprocessing.Pipe`` (direct, no broker, no agents, blocking reads). A second row
measures the floor of any event-loop worker: two uvloop processes bouncing the
int over the same kind of socket pair as length-prefixed orjson frames, an
``asyncio.Protocol`` feeding an ``asyncio.Queue`` (what an agent awaiting its
inbox needs at least: a wakeup of the loop, a frame and a task switch per hop).

Figures are round trips per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Callable

import orjson
import uvloop

import carmulti
from carmulti import AgentOutput, AgentSpec, Mailbox, Message, ProcessExecutor, SharedInfra, Swarm

from ._report import Report, Row, add_common_arguments, median, repeats
from ._util import reap

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


class PingPongRunner:
    """``ping`` sends first; both echo until ``n`` round trips are done."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Mailbox) -> AgentOutput:
        me, other = ("ping", "pong") if spec.name == "ping" else ("pong", "ping")
        inbox = mailbox.register(me)
        await _ready(mailbox, other)
        if me == "ping":
            await mailbox.send(Message(me, other, 0))
        count = 0
        while True:
            msg = await inbox.recv(timeout_s=30)
            if msg.content >= self.n:  # the first to see n tells the other to stop
                if msg.content == self.n:
                    await mailbox.send(Message(me, other, msg.content + 1))
                break
            count += 1
            await mailbox.send(Message(me, other, msg.content + 1))
        return AgentOutput(spec.name, str(count), turns=1)


async def _ready(mailbox: Mailbox, name: str) -> None:
    while name not in mailbox:
        await asyncio.sleep(0)


async def _ours(n: int, workers: int = 0) -> float:
    async with SharedInfra(executor=ProcessExecutor(workers=workers) if workers else None) as infra:
        if workers:
            await infra.start()
        t0 = time.perf_counter()
        res = await Swarm([AgentSpec("ping"), AgentSpec("pong")]).run("ping-pong", PingPongRunner(2 * n), infra)
        dt = time.perf_counter() - t0
    if not all(o.succeeded for o in res.outputs):
        raise SystemExit(f"ping-pong failed: {[o.error for o in res.outputs]}")
    return n / dt


async def _baseline(n: int) -> float:
    a: asyncio.Queue[int] = asyncio.Queue(64)
    b: asyncio.Queue[int] = asyncio.Queue(64)

    async def ping() -> None:
        await b.put(0)
        while True:
            v = await a.get()
            if v >= 2 * n:
                return
            await b.put(v + 1)

    async def pong() -> None:
        while True:
            v = await b.get()
            await a.put(v + 1)
            if v + 1 >= 2 * n:
                return

    t0 = time.perf_counter()
    await asyncio.gather(ping(), pong())
    return n / (time.perf_counter() - t0)


# Both cross-process baselines: the parent sends -1 (warm-up: the child is up once it answers 0), then
# times n round trips, sending the even numbers 0 .. 2n-2; the child answers each v with v + 1 and exits
# after answering 2n-2.
def _pipe_child(conn: Connection[int, int], n: int) -> None:  # pragma: no cover - child process
    while True:
        v = conn.recv()
        conn.send(v + 1)
        if v + 1 >= 2 * n - 1:
            return


def _pipe_parent(a: Connection[int, int], n: int) -> float:
    a.send(-1)
    a.recv()
    t0 = time.perf_counter()
    v = 0
    a.send(v)
    while True:
        v = a.recv()
        if v >= 2 * n - 1:
            break
        a.send(v + 1)
    return n / (time.perf_counter() - t0)


def _with_child(child: Callable[[Connection[int, int], int], None], parent: Callable[[Connection[int, int], int], float],
                n: int) -> float:
    """``parent(a, n)`` here while ``child(b, n)`` runs in a spawned process; ``a``, ``b``: a ``Pipe`` (AF_UNIX).

    Raises:
        RuntimeError: the child did not exit by itself with status 0 within 10 s of the parent's end.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=child, args=(b, n))
    proc.start()
    b.close()
    try:
        return parent(a, n)
    finally:
        a.close()
        reap(proc)
        if proc.exitcode != 0:
            raise RuntimeError(f"the baseline's child process {child.__name__} ended with {proc.exitcode} "
                               "(killed after 10 s if negative): the baseline is broken")


def _pipe_baseline(n: int) -> float:
    return _with_child(_pipe_child, _pipe_parent, n)


_LEN = struct.Struct(">I")


class _Frames(asyncio.Protocol):
    """Length-prefixed orjson frames: each one received goes on ``queue`` (``None`` when the connection
    closed); :meth:`send` writes one."""

    def __init__(self, queue: asyncio.Queue[int | None]) -> None:
        self.queue = queue
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            size = _LEN.unpack_from(buf, pos)[0]
            if len(buf) - pos - 4 < size:
                break
            self.queue.put_nowait(orjson.loads(bytes(buf[pos + 4:pos + 4 + size])))
            pos += 4 + size
        del buf[:pos]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.queue.put_nowait(None)

    def send(self, v: int) -> None:
        data = orjson.dumps(v)
        self.transport.write(_LEN.pack(len(data)) + data)


async def _frames(fd: int) -> tuple[Any, _Frames]:
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    sock = socket.socket(fileno=fd)
    return await asyncio.get_running_loop().create_unix_connection(lambda: _Frames(queue), sock=sock)


async def _uvloop_child_main(fd: int, n: int) -> None:  # pragma: no cover - child process
    transport, proto = await _frames(fd)
    try:
        while True:
            v = await proto.queue.get()
            if v is None:  # the parent is gone
                return
            proto.send(v + 1)
            if v + 1 >= 2 * n - 1:
                return
    finally:
        transport.close()


def _uvloop_child(conn: Connection[int, int], n: int) -> None:  # pragma: no cover - child process
    uvloop.run(_uvloop_child_main(os.dup(conn.fileno()), n))
    conn.close()


_CLOSED = "uvloop ping-pong baseline: the child process closed its socket before its last answer"


async def _uvloop_parent_main(fd: int, n: int) -> float:
    transport, proto = await _frames(fd)
    try:
        proto.send(-1)
        if await proto.queue.get() is None:
            raise RuntimeError(_CLOSED)
        t0 = time.perf_counter()
        proto.send(0)
        while True:
            v = await proto.queue.get()
            if v is None:
                raise RuntimeError(_CLOSED)
            if v >= 2 * n - 1:
                return n / (time.perf_counter() - t0)
            proto.send(v + 1)
    finally:
        transport.close()


def _uvloop_parent(a: Connection[int, int], n: int) -> float:
    return uvloop.run(_uvloop_parent_main(os.dup(a.fileno()), n))


def _uvloop_baseline(n: int) -> float:
    return _with_child(_uvloop_child, _uvloop_parent, n)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=20_000, help="round trips per measured run, in-process (default 20000)")
    p.add_argument("--n-process", type=int, default=2_000, help="round trips per measured run across processes (default 2000)")
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    report = Report("mailbox", {"n": args.n, "n_process": args.n_process, "repeat": args.repeat})
    for _ in range(args.warmup):
        carmulti.run(_ours(max(1, args.n // 10)))
    ours = repeats("mailbox", "ping-pong in-process, carmulti", args.repeat, lambda: carmulti.run(_ours(args.n)))
    base = repeats("mailbox", "ping-pong in-process, 2 asyncio.Queue", args.repeat, lambda: carmulti.run(_baseline(args.n)))
    report.add(Row("ping-pong in-process", median(ours), "round trips/s", median(base), "2 asyncio.Queue", ours, base, target=0.6))
    m = args.n_process
    ours_p = repeats("mailbox", "ping-pong across processes, carmulti", args.repeat,
                     lambda: carmulti.run(_ours(m, workers=2)))
    base_p = repeats("mailbox", "ping-pong across processes, Pipe", args.repeat, lambda: _pipe_baseline(m))
    report.add(Row("ping-pong across processes (direct)", median(ours_p), "round trips/s", median(base_p),
                   "2 processes, multiprocessing.Pipe", ours_p, base_p, target=0.5))
    floor = repeats("mailbox", "ping-pong across processes, 2 uvloop processes", args.repeat,
                    lambda: _uvloop_baseline(m))
    report.add(Row("ping-pong across processes (direct)", median(ours_p), "round trips/s", median(floor),
                   "2 uvloop processes, Unix socket, asyncio.Protocol + Queue", ours_p, floor,
                   note="the event loop's floor: a loop wakeup, a frame and a task switch per hop"))
    return report.finish(args.json, args.check)
