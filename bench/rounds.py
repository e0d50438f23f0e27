"""Round trips of the iterative patterns: Pipeline, Supervisor, debate Swarm and a Tournament of 8.

Each pattern runs a zero-latency runner many times; the baseline performs the
same runner calls with the same shape (sequential awaits for a pipeline, one
``asyncio.gather`` per round for supervisor workers and debate rounds, one
``gather`` of the 8 competitors then the 7 judge calls one after another for
the tournament) with no engine in between. Figures are coordinations per second.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import carmulti
from carmulti import AgentOutput, AgentSpec, Pipeline, SharedInfra, Supervisor, Swarm, SwarmMode, Tournament

from ._report import Report, Row, add_common_arguments, median, repeats

#: Minimum ratio ours / bare awaits of every row (the per-agent overhead target of the sequential patterns).
PER_AGENT_TARGET = 0.3

#: Competitors of the tournament row (7 matches: 4 + 2 + 1).
TOURNAMENT_SIZE = 8

class InstantRunner:
    """Answers at once; a supervisor never approves (so every round runs)."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        return AgentOutput(spec.name, f"{spec.name} ok", turns=1)


async def _ours(kind: str, n: int, width: int) -> float:
    runner = InstantRunner()
    specs = [AgentSpec(f"a{i}") for i in range(width)]
    async with SharedInfra() as infra:
        if kind == "pipeline":
            pat: Any = Pipeline(specs)
        elif kind == "supervisor":
            pat = Supervisor(specs, AgentSpec("boss"), max_rounds=3)
        elif kind == "tournament":
            pat = Tournament([AgentSpec(f"c{i}") for i in range(TOURNAMENT_SIZE)], AgentSpec("judge"))
        else:
            pat = Swarm(specs, SwarmMode.DEBATE)
        t0 = time.perf_counter()
        for _ in range(n):
            await pat.run("task", runner, infra)
        return n / (time.perf_counter() - t0)


async def _baseline(kind: str, n: int, width: int) -> float:
    runner = InstantRunner()
    specs = [AgentSpec(f"a{i}") for i in range(width)]
    boss = AgentSpec("boss")
    competitors = [AgentSpec(f"c{i}") for i in range(TOURNAMENT_SIZE)]
    judge = AgentSpec("judge")
    t0 = time.perf_counter()
    for _ in range(n):
        if kind == "pipeline":
            for s in specs:
                await runner.run(s, "task", None, None)
        elif kind == "supervisor":
            for _r in range(3):
                await asyncio.gather(*[runner.run(s, "task", None, None) for s in specs])
                await runner.run(boss, "task", None, None)
        elif kind == "tournament":
            await asyncio.gather(*[runner.run(s, "task", None, None) for s in competitors])
            for _m in range(TOURNAMENT_SIZE - 1):
                await runner.run(judge, "task", None, None)
        else:
            for _r in range(2):
                await asyncio.gather(*[runner.run(s, "task", None, None) for s in specs])
    return n / (time.perf_counter() - t0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=500, help="coordinations per measured run (default 500)")
    p.add_argument("--width", type=int, default=4, help="stages / workers / debaters (default 4)")
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    report = Report("rounds", {"n": args.n, "width": args.width, "repeat": args.repeat})
    for kind, label in (("pipeline", f"Pipeline of {args.width}"), ("supervisor", f"Supervisor {args.width} workers x 3 rounds"),
                        ("debate", f"debate Swarm of {args.width}"),
                        ("tournament", f"Tournament of {TOURNAMENT_SIZE}")):
        for _ in range(args.warmup):
            carmulti.run(_ours(kind, max(1, args.n // 10), args.width))
        ours = repeats("rounds", f"{label}, carmulti", args.repeat, lambda: carmulti.run(_ours(kind, args.n, args.width)))
        base = repeats("rounds", f"{label}, baseline", args.repeat,
                       lambda: carmulti.run(_baseline(kind, args.n, args.width)))
        report.add(Row(label, median(ours), "runs/s", median(base), "bare awaits / gather", ours, base,
                       target=PER_AGENT_TARGET))
    return report.finish(args.json, args.check)
