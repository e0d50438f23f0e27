"""Agent-to-agent ping-pong through mailboxes.

In-process: two agents of a parallel Swarm bounce a message ``--n`` times
through a :class:`carmulti.Mailbox`; the baseline bounces it through two bare
``asyncio.Queue`` objects. Figures are round trips per second.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import carmulti
from carmulti import AgentOutput, AgentSpec, Mailbox, Message, SharedInfra, Swarm

from ._report import Report, Row, add_common_arguments, median


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


async def _ours(n: int) -> float:
    async with SharedInfra() as infra:
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=20_000, help="round trips per measured run (default 20000)")
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    report = Report("mailbox", {"n": args.n, "repeat": args.repeat})
    for _ in range(args.warmup):
        carmulti.run(_ours(max(1, args.n // 10)))
    ours = [carmulti.run(_ours(args.n)) for _ in range(args.repeat)]
    base = [carmulti.run(_baseline(args.n)) for _ in range(args.repeat)]
    report.add(Row("ping-pong in-process", median(ours), "round trips/s", median(base), "2 asyncio.Queue", ours, base))
    return report.finish(args.json)
