"""Fan-out throughput: N zero-latency agents in one parallel Swarm, against a same-run baseline.

``--executor process``: carmulti on a ``ProcessExecutor`` against a stdlib
``concurrent.futures.ProcessPoolExecutor`` with the same worker count and one
future per agent driven from asyncio (``loop.run_in_executor``).

``--executor local``: carmulti on the in-process ``LocalExecutor`` against a
bare ``asyncio.gather`` of one coroutine per agent on uvloop.

Both sides are warmed up (workers started, runner shipped) before timing; each
side runs ``--runs`` times and the median agents/s is reported with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import time
from typing import Any

import carmulti
from carmulti import AgentSpec, LocalExecutor, ProcessExecutor, SharedInfra, Swarm

from ._util import machine, median, peak_rss_mib


class ZeroRunner:
    """Answers at once (no model, no sleep): measures pure coordination overhead."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        return "ok"


def _baseline_fn(name: str) -> str:
    return "ok"


async def _zero_coro(name: str) -> str:
    return "ok"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("process", "local"), default="process",
                        help="where carmulti runs the agents (default: process)")
    parser.add_argument("--agents", type=int, default=100_000, help="agents per run (default: 100000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes, for carmulti and the baseline pool (default: cpu count)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side; the median is reported (default: 3)")
    parser.add_argument("--batch-size", type=int, default=512, help="ProcessExecutor batch_size (default: 512)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline")


async def _carmulti_runs(args: argparse.Namespace, specs: list[AgentSpec]) -> list[float]:
    if args.executor == "process":
        executor: Any = ProcessExecutor(workers=args.workers, batch_size=args.batch_size)
    else:
        executor = LocalExecutor()
    rates = []
    runner = ZeroRunner()
    async with SharedInfra(executor=executor) as infra:
        await Swarm(specs[:64]).run("warm-up", runner, infra)  # ships the runner and infra to every worker
        for _ in range(args.runs):
            infra.state.replace_all({})
            t0 = time.perf_counter()
            res = await Swarm(specs).run("fan-out", runner, infra)
            dt = time.perf_counter() - t0
            bad = sum(1 for o in res.outputs if not o.succeeded)
            if bad or len(res.outputs) != len(specs):
                raise SystemExit(f"carmulti run failed: {bad} failed outputs of {len(res.outputs)}")
            rates.append(len(specs) / dt)
    return rates


async def _baseline_runs(args: argparse.Namespace, names: list[str]) -> list[float]:
    loop = asyncio.get_running_loop()
    rates = []
    if args.executor == "process":
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers) as pool:
            await asyncio.gather(*[loop.run_in_executor(pool, _baseline_fn, n) for n in names[:64]])  # warm-up
            for _ in range(args.runs):
                t0 = time.perf_counter()
                out = await asyncio.gather(*[loop.run_in_executor(pool, _baseline_fn, n) for n in names])
                dt = time.perf_counter() - t0
                assert len(out) == len(names)
                rates.append(len(names) / dt)
    else:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            out = await asyncio.gather(*[_zero_coro(n) for n in names])
            dt = time.perf_counter() - t0
            assert len(out) == len(names)
            rates.append(len(names) / dt)
    return rates


def main(args: argparse.Namespace) -> int:
    n = args.agents
    specs = [AgentSpec(f"a{i}") for i in range(n)]
    names = [s.name for s in specs]
    label = (f"carmulti Swarm on ProcessExecutor(workers={args.workers})" if args.executor == "process"
             else "carmulti Swarm on LocalExecutor")
    base_label = (f"stdlib ProcessPoolExecutor(max_workers={args.workers}), one future per agent via run_in_executor"
                  if args.executor == "process" else "bare asyncio.gather on uvloop, one coroutine per agent")
    print(f"fanout: {n} zero-latency agents, {args.runs} runs per side, machine {machine()}")
    ours = carmulti.run(_carmulti_runs(args, specs))
    print(f"  {label}: median {median(ours):,.0f} agents/s  (runs: {', '.join(f'{r:,.0f}' for r in ours)})")
    if args.no_baseline:
        return 0
    base = carmulti.run(_baseline_runs(args, names))
    print(f"  {base_label}: median {median(base):,.0f} agents/s  (runs: {', '.join(f'{r:,.0f}' for r in base)})")
    print(f"  ratio carmulti / baseline: {median(ours) / median(base):.2f}x   peak RSS {peak_rss_mib():.0f} MiB")
    return 0
