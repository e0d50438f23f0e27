"""Durable runs: a journaled MapReduce beside the same run without a journal, and replaying the finished journal.

One invocation, ``--repeat`` rounds, each round three runs of the same
``--items``-item MapReduce (tree reduction, ``--reduce-fan-in``) with a
zero-latency runner (``--latency-ms`` gives every agent a fixed latency):

* plain: ``SharedInfra()``, no journal (the baseline);
* journaled: ``SharedInfra(journal=<fresh file>)``: every agent that
  succeeds is recorded before its result reaches the pattern;
* replay: ``SharedInfra(journal=<that finished file>)`` again: every agent is
  replayed from its record, none runs (opening and indexing the journal is
  timed too; the executor never even starts).

Figures are agents/s (medians); the journaled run's ratio to the plain one is
its overhead (target: at most 15%, a ratio >= 0.87x), the replay's ratio to the
journaled run is what resuming a finished run saves (target >= 5x). Each run
checks the reduced total; the replay checks that every agent was replayed and
that the result equals the journaled run's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import tempfile
import time
from typing import Any

import carmulti
from carmulti import AgentOutput, AgentSpec, MapReduce, ProcessExecutor, SharedInfra

from ._report import Report, Row, add_common_arguments, median, repeats

#: ratio journaled / plain agents/s that a 15% overhead allows (1 / 1.15, rounded)
OVERHEAD_TARGET = 0.87
REPLAY_TARGET = 5.0


class CountingRunner:
    """Mappers answer ``1`` (after ``latency_s``); reducers sum the numbers in their task."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if spec.metadata.get("role") == "reducer":
            lines = task.split("\nMapper outputs:\n", 1)[1].splitlines() if "\nMapper outputs:\n" in task else []
            return AgentOutput(spec.name, str(sum(int(ln.rsplit(": ", 1)[1]) for ln in lines)), turns=1)
        return AgentOutput(spec.name, "1", turns=1)


async def run_once(args: argparse.Namespace, journal: str | None, *, start: bool = True) -> dict[str, Any]:
    """One MapReduce; the clock starts before ``SharedInfra(...)`` (the journal is opened and indexed
    there) and after the executor started (``start``), and stops when ``run`` returns."""
    mr = MapReduce(AgentSpec("m", metadata={"role": "mapper"}), AgentSpec("r", metadata={"role": "reducer"}),
                   args.concurrency, reduce_fan_in=args.reduce_fan_in or None)
    executor = ProcessExecutor(workers=args.workers) if args.executor == "process" else None
    if start and executor is not None:
        await executor.start()
    t0 = time.perf_counter()
    infra = SharedInfra(executor=executor, journal=journal)
    try:
        res = await mr.run("count", [""] * args.items, CountingRunner(args.latency_ms / 1000.0), infra)
        wall = time.perf_counter() - t0
        replayed = infra.replayed
    finally:
        await infra.aclose()
    if res.reduced_answer != str(args.items):
        raise SystemExit(f"MapReduce total {res.reduced_answer!r} != {args.items}")
    agents = args.items + len(res.reduce_outputs) + 1
    return {"wall_s": wall, "agents": agents, "agents_per_s": agents / wall, "replayed": replayed,
            "result": res.to_dict()}


def one_round(args: argparse.Namespace, tmp: str, k: int) -> dict[str, Any]:
    path = os.path.join(tmp, f"run{k}.journal")

    async def go() -> dict[str, Any]:
        plain = await run_once(args, None)
        journaled = await run_once(args, path)
        size = os.path.getsize(path)
        replay = await run_once(args, path, start=False)
        if replay["replayed"] != journaled["agents"] or replay["result"] != journaled["result"]:
            raise SystemExit(f"replay of {path}: {replay['replayed']} of {journaled['agents']} agents replayed, "
                             f"result {'equal' if replay['result'] == journaled['result'] else 'DIFFERENT'}")
        os.unlink(path)
        return {"plain": plain["agents_per_s"], "journaled": journaled["agents_per_s"],
                "replay": replay["agents_per_s"], "agents": journaled["agents"], "journal_bytes": size,
                "replay_wall_s": replay["wall_s"], "journaled_wall_s": journaled["wall_s"]}

    return carmulti.run(go())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, default=100_000, help="mapper agents (default 100000)")
    p.add_argument("--reduce-fan-in", type=int, default=64, help="max answers per reducer (default 64; 0 = flat)")
    p.add_argument("--concurrency", type=int, default=1000, help="mappers at once (default 1000)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="every agent's latency in ms (default 0)")
    p.add_argument("--executor", choices=("local", "process"), default="local", help="where agents run (default local)")
    p.add_argument("--workers", type=int, default=2, help="worker processes with --executor process (default 2)")
    add_common_arguments(p, repeat=3)
    p.set_defaults(warmup=0)


def main(args: argparse.Namespace) -> int:
    report = Report("resume", {"items": args.items, "reduce_fan_in": args.reduce_fan_in or None,
                               "concurrency": args.concurrency, "latency_ms": args.latency_ms,
                               "executor": args.executor})
    tmp = tempfile.mkdtemp(prefix="carmulti-bench-resume-")
    try:
        for k in range(max(0, args.warmup)):
            one_round(args, tmp, -1 - k)
        n = itertools.count()
        rounds = repeats("resume", f"plain, journaled, replayed MapReduce of {args.items:,} items",
                         max(1, args.repeat), lambda: one_round(args, tmp, next(n)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plain = [r["plain"] for r in rounds]
    journaled = [r["journaled"] for r in rounds]
    replay = [r["replay"] for r in rounds]
    agents = rounds[0]["agents"]
    report.add(Row("journaled MapReduce", median(journaled), "agents/s", baseline=median(plain),
                   baseline_name="same run without a journal", runs=journaled, baseline_runs=plain,
                   target=OVERHEAD_TARGET, note="overhead <= 15%"))
    report.add(Row("replay of the finished journal", median(replay), "agents/s", baseline=median(journaled),
                   baseline_name="the journaled run", runs=replay, baseline_runs=journaled, target=REPLAY_TARGET,
                   note="opening and indexing the journal included"))
    mib = median([r["journal_bytes"] for r in rounds]) / 2**20
    report.add(Row("journal size", mib, "MiB", note=f"{mib * 2**20 / agents:.0f} bytes per agent"))
    report.extra.update({"agents": agents, "rounds": rounds})
    overhead = median(plain) / median(journaled) - 1
    print(f"{agents:,} agents per run; journal overhead {overhead:+.0%}, replay "
          f"{median(replay) / median(journaled):.1f}x the journaled run; every replay checked: OK")
    return report.finish(args.json, args.check)
