"""MapReduce at scale: ``--items 1000000 --reduce-fan-in 64`` with a zero-latency runner.

Exercises tree reduction (no reducer sees more than ``--reduce-fan-in``
answers; every reducer's task is checked) and bounded live agents (at most
``--concurrency`` mappers at once, fed by a fixed set of feeder coroutines).
``MapReduce.run`` returns every mapper output and writes one state key per
mapper, so memory grows with the items (the peak RSS printed is for that);
``MapReduce.stream`` is the O(concurrency) way to consume millions of items.
Prints agents/s, peak RSS and the number of reducer levels.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import carmulti
from carmulti import AgentOutput, AgentSpec, MapReduce, SharedInfra

from ._report import Report, Row, add_common_arguments, repeats
from ._util import peak_rss_mib


class CountingRunner:
    """Mappers answer ``1``; reducers sum the numbers in their task and check the fan-in."""

    def __init__(self, fan_in: int | None) -> None:
        self.fan_in = fan_in

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if spec.metadata.get("role") == "reducer":
            lines = task.split("\nMapper outputs:\n", 1)[1].splitlines() if "\nMapper outputs:\n" in task else []
            if self.fan_in is not None and len(lines) > self.fan_in:
                raise RuntimeError(f"reducer {spec.name} got {len(lines)} answers > fan-in {self.fan_in}")
            total = sum(int(ln.rsplit(": ", 1)[1]) for ln in lines)
            return AgentOutput(spec.name, str(total), turns=1)
        return AgentOutput(spec.name, "1", turns=1)


async def run_once(items: int, fan_in: int | None, concurrency: int) -> dict[str, Any]:
    mapper = AgentSpec("m", metadata={"role": "mapper"})
    reducer = AgentSpec("r", metadata={"role": "reducer"})
    async with SharedInfra() as infra:
        t0 = time.perf_counter()
        res = await MapReduce(mapper, reducer, concurrency, reduce_fan_in=fan_in).run(
            "count", [""] * items, CountingRunner(fan_in), infra)
        wall = time.perf_counter() - t0
    if res.reduced_answer != str(items):
        raise SystemExit(f"MapReduce total {res.reduced_answer!r} != {items}")
    levels = len({o.name.split("_")[1] for o in res.reduce_outputs}) if res.reduce_outputs else 0
    agents = items + len(res.reduce_outputs) + 1
    return {"wall_s": wall, "agents": agents, "agents_per_s": agents / wall, "reduce_levels": levels,
            "intermediate_reducers": len(res.reduce_outputs)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, default=100_000, help="mapper agents (default 100000)")
    p.add_argument("--reduce-fan-in", type=int, default=64, help="max answers per reducer (default 64; 0 = flat)")
    p.add_argument("--concurrency", type=int, default=1000, help="mappers at once (default 1000)")
    p.add_argument("--max-rss-mib", type=float, default=4096.0, metavar="MIB",
                   help="target: peak RSS at most this many MiB (default 4096, the 1M-item target)")
    add_common_arguments(p, repeat=1)
    p.set_defaults(warmup=0)


def main(args: argparse.Namespace) -> int:
    fan_in = args.reduce_fan_in or None
    report = Report("mapreduce", {"items": args.items, "reduce_fan_in": fan_in, "concurrency": args.concurrency})
    runs = repeats("mapreduce", f"MapReduce of {args.items:,} items", max(1, args.repeat),
                   lambda: carmulti.run(run_once(args.items, fan_in, args.concurrency)))
    best = sorted(runs, key=lambda r: r["agents_per_s"])[len(runs) // 2]
    report.add(Row("MapReduce agents/s", best["agents_per_s"], "agents/s", runs=[r["agents_per_s"] for r in runs],
                   note=f"{best['agents']} agents, {best['reduce_levels']} reduce levels"))
    report.add(Row("peak RSS", peak_rss_mib(), "MiB", max_value=args.max_rss_mib))
    report.extra.update(best)
    print(f"{best['agents']:,} agents ({args.items:,} mappers, {best['intermediate_reducers']:,} intermediate reducers "
          f"in {best['reduce_levels']} levels, 1 final) in {best['wall_s']:.1f} s; total checked: OK")
    return report.finish(args.json, args.check)
