"""Agent-to-agent ping-pong through mailboxes.

In-process: two agents of a parallel Swarm bounce a message ``--n`` times
through a :class:`carmulti.Mailbox`; the baseline bounces it through two bare
``asyncio.Queue`` objects.

Across processes: the same two agents on a ``ProcessExecutor(workers=2)``,
sharing the coordinator's mailbox; each inbox is hosted in its agent's worker
and messages go worker to worker directly (the coordinator is the directory). The baseline is two bare processes bouncing an int
over a ``multiprocessing.Pipe`` (direct, no broker, no agents).

Figures are round trips per second.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

import carmulti
from carmulti import AgentOutput, AgentSpec, Mailbox, Message, ProcessExecutor, SharedInfra, Swarm

from ._report import Report, Row, add_common_arguments, median, repeats

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


def _pipe_child(conn: Connection[int, int], n: int) -> None:  # pragma: no cover - child process
    while True:
        v = conn.recv()
        conn.send(v + 1)
        if v + 1 >= 2 * n:
            return


def _pipe_baseline(n: int) -> float:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=_pipe_child, args=(b, n))
    proc.start()
    try:
        a.send(-1)  # warm-up: the child is up once it answers
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
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()


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
    return report.finish(args.json, args.check)
