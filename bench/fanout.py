"""Fan-out throughput: N agents in one parallel Swarm (or a bounded MapReduce), beside same-run baselines.

``--executor local``: carmulti's in-process executor vs a bare ``asyncio.gather``
of the same runner coroutine on uvloop. ``--executor process``: carmulti's
``ProcessExecutor`` vs a stdlib ``concurrent.futures.ProcessPoolExecutor`` with
the same worker count and one future per agent (``loop.run_in_executor``), and
vs raw pyzmq DEALER/ROUTER pipelined round trips with the per-agent frame size
(the transport's ceiling for one message per agent), and vs a minimal engine
(``bench/minimal_engine.py``: the same workers, frames and transport, one
asyncio task per agent and nothing else; the engine-overhead ceiling). ``--executor ray``:
carmulti's ``RayExecutor`` on a local Ray vs one Ray task per agent and
``ray.util.ActorPool`` on the same Ray; ``--nodes N`` runs it on a local
``Cluster`` of 1..N nodes and reports agents/s per node count. ``--peers`` adds LangGraph
(``Send`` fan-out into an ``operator.add`` reducer) for local and Ray (one task
per agent, ``num_cpus=2``) for process, when ``pip install '.[bench-peers]'``
is installed.

``--latency 50ms..500ms`` gives each agent a deterministic latency spread
uniformly over the range (agent i sleeps ``lo + (hi-lo)*frac(i*phi)``);
``--concurrency C`` runs a MapReduce with ``max_concurrent=C`` and compares the
wall time with the ideal ``sum(latency) / C``.

``--plot out.png`` sweeps N (``--sweep``), one fresh interpreter per point, and
draws agents/s and peak RSS against N for ours and the baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import math
import os
import time
from typing import Any, Callable

import orjson

import carmulti
from carmulti import AgentSpec, LocalExecutor, MapReduce, ProcessExecutor, RayExecutor, SharedInfra, Swarm

from ._report import Report, Row, add_common_arguments, median, progress, repeats
from ._util import BASELINE_WAIT_S, RssSampler, ipc_endpoint, reap, silent
from .minimal_engine import minimal_engine

PHI = (math.sqrt(5) - 1) / 2


def parse_latency(text: str) -> tuple[float, float]:
    """``"0"``, ``"50ms"``, ``"0.2s"``, ``"50ms..500ms"`` -> ``(lo_s, hi_s)``.

    Raises:
        argparse.ArgumentTypeError: unreadable, negative, or lo > hi.
    """
    def one(t: str) -> float:
        t = t.strip()
        try:
            if t.endswith("ms"):
                return float(t[:-2]) / 1000.0
            if t.endswith("s"):
                return float(t[:-1])
            return float(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--latency: cannot read {t!r}; use e.g. 50ms, 0.2s or 50ms..500ms") from None

    lo_t, _, hi_t = text.partition("..")
    lo = one(lo_t)
    hi = one(hi_t) if hi_t else lo
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"--latency: need 0 <= lo <= hi, got {text!r}")
    return lo, hi


def agent_latency(i: int, lo: float, hi: float) -> float:
    """Deterministic latency of agent ``i``: a low-discrepancy spread over ``[lo, hi]``."""
    return lo + (hi - lo) * ((i * PHI) % 1.0)


def _index(name: str) -> int | None:
    """Agent ``a_17`` -> 17; a name without an index (the MapReduce reducer) -> ``None``."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


class ZeroRunner:
    """Answers at once (no model, no sleep): pure coordination overhead."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        return "ok"


class LatencyRunner:
    """Sleeps the agent's deterministic latency, then answers.

    The MapReduce reducer (no index in its name) is not one of the N agents the
    ideal wall time counts: it answers at once, so wall / ideal measures the fan-out.
    """

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        i = _index(spec.name)
        if i is not None:
            await asyncio.sleep(agent_latency(i, self.lo, self.hi))
        return "ok"


def _runner(lo: float, hi: float) -> ZeroRunner | LatencyRunner:
    return ZeroRunner() if hi == 0 else LatencyRunner(lo, hi)


# -- ours ---------------------------------------------------------------------------------
def _noop() -> None:
    pass


def _executor(executor: str, workers: int | None, batch_size: int, ray_address: str | None,
              concurrency: int | None = None) -> Any:
    if executor == "process":
        w = workers or os.cpu_count() or 2
        # Every agent of a --concurrency C run may be in flight at once: let each worker hold its share.
        inflight = max(8192, -(-concurrency // w)) if concurrency else 8192
        return ProcessExecutor(workers=w, batch_size=batch_size, max_inflight_per_worker=inflight)
    if executor == "ray":
        return RayExecutor(address=ray_address, workers=workers, batch_size=batch_size)
    return LocalExecutor()


async def _ours(n: int, *, executor: str, workers: int | None, batch_size: int, lo: float, hi: float,
                concurrency: int | None, repeat: int, warmup: int, tick: Callable[[], None] = _noop,
                ray_address: str | None = None, rss: list[tuple[int, int]] | None = None) -> list[float]:
    """agents/s of each measured run (a warm-up first ships the runner to the workers); ``tick()`` after each.

    With ``rss``, each measured run appends ``(bytes resident before, peak bytes resident)`` of this
    process plus its workers (:class:`RssSampler`).
    """
    ex = _executor(executor, workers, batch_size, ray_address, concurrency)
    runner = _runner(lo, hi)
    rates = []
    # Swarm specs are built outside the timed region, as for the baselines (a MapReduce names its own).
    all_specs = [AgentSpec(f"a_{i}") for i in range(n)] if concurrency is None else []
    async with SharedInfra(executor=ex) as infra:
        for k in range(warmup + repeat):
            infra.state.replace_all({})
            m = min(n, 256) if k < warmup else n
            specs = all_specs[:m]
            sampler = RssSampler() if rss is not None and k >= warmup else contextlib.nullcontext()
            with sampler:
                t0 = time.perf_counter()
                if concurrency is None:
                    res = await Swarm(specs).run("fan-out", runner, infra)
                    outs = res.outputs
                else:
                    mr = MapReduce(AgentSpec("a"), AgentSpec("reduce"), concurrency)
                    res2 = await mr.run("fan-out", [""] * m, runner, infra)
                    outs = res2.map_outputs
                dt = time.perf_counter() - t0
            if isinstance(sampler, RssSampler) and rss is not None:
                rss.append((sampler.before, sampler.peak))
            bad = sum(1 for o in outs if not o.succeeded)
            if bad or len(outs) != m:
                raise SystemExit(f"carmulti run failed: {bad} failed outputs of {len(outs)}")
            if k >= warmup:
                rates.append(m / dt)
                tick()
    return rates


# -- baselines ------------------------------------------------------------------------------
async def _gather(n: int, lo: float, hi: float, concurrency: int | None, repeat: int,
                  tick: Callable[[], None] = _noop) -> list[float]:
    runner = _runner(lo, hi)
    specs = [AgentSpec(f"a_{i}") for i in range(n)]
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if concurrency is None:
            out = await asyncio.gather(*[runner.run(s, "fan-out", None, None) for s in specs])
        else:
            sem = asyncio.Semaphore(concurrency)

            async def one(s: AgentSpec) -> str:
                async with sem:
                    return await runner.run(s, "fan-out", None, None)

            out = await asyncio.gather(*[one(s) for s in specs])
        dt = time.perf_counter() - t0
        assert len(out) == n
        rates.append(n / dt)
        tick()
    return rates


def _ppe_fn(i: int) -> str:
    return "ok"


async def _ppe(n: int, workers: int, repeat: int, tick: Callable[[], None] = _noop) -> list[float]:
    loop = asyncio.get_running_loop()
    rates = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        await asyncio.gather(*[loop.run_in_executor(pool, _ppe_fn, i) for i in range(64)])  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = await asyncio.gather(*[loop.run_in_executor(pool, _ppe_fn, i) for i in range(n)])
            dt = time.perf_counter() - t0
            assert len(out) == n
            rates.append(n / dt)
            tick()
    return rates


def job_frame_bytes() -> int:
    """Bytes one zero-latency agent costs on our wire (job + result), for the raw-zmq baseline."""
    job = {"id": 123456, "r": 1, "i": 1, "spec": {"name": "a_123456"}, "task": "fan-out"}
    res = {"id": 123456, "out": ["a_123456", "ok", 1, 0, 0.0123, None, None, []], "err": None, "dur": 0.0123}
    return len(orjson.dumps(job)) + len(orjson.dumps(res))


def _zmq_echo(endpoint: str) -> None:  # pragma: no cover - child process
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.bind(endpoint)
    while True:
        ident, msg = s.recv_multipart()
        if msg == b"stop":
            break
        s.send_multipart([ident, msg])
    s.close(0)
    ctx.term()


def _raw_zmq(n: int, size: int, repeat: int, tick: Callable[[], None] = _noop) -> list[float]:
    """Pipelined DEALER -> ROUTER echo round trips, one message of ``size`` bytes per agent."""
    with ipc_endpoint("echo") as endpoint:
        return _raw_zmq_at(endpoint, n, size, repeat, tick)


def _raw_zmq_at(endpoint: str, n: int, size: int, repeat: int, tick: Callable[[], None],
                wait_s: float = BASELINE_WAIT_S) -> list[float]:
    """Raises: RuntimeError: the echo process sent nothing for ``wait_s`` seconds (it died, or never bound)."""
    import multiprocessing

    import zmq

    proc = multiprocessing.get_context("spawn").Process(target=_zmq_echo, args=(endpoint,), daemon=True)
    proc.start()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.RCVTIMEO, int(wait_s * 1000))
    s.setsockopt(zmq.SNDTIMEO, int(wait_s * 1000))
    s.connect(endpoint)
    payload = b"x" * size
    rates = []
    try:
        try:
            s.send(payload)  # connection warm-up
            s.recv()
            for _ in range(repeat):
                t0 = time.perf_counter()
                sent = got = 0
                while got < n:  # keep up to 1000 in flight
                    while sent < n and sent - got < 1000:
                        s.send(payload)
                        sent += 1
                    s.recv()
                    got += 1
                rates.append(n / (time.perf_counter() - t0))
                tick()
        except zmq.Again:
            raise silent("raw pyzmq baseline", [proc], wait_s) from None
        s.send(b"stop")
    finally:
        s.close(0)
        ctx.term()
        reap(proc)
    return rates


# -- sweep points for --plot (each runs in a fresh interpreter, see bench.plot) -------------
async def point_carmulti_local(n: int) -> float:
    return (await _ours(n, executor="local", workers=1, batch_size=512, lo=0, hi=0, concurrency=None, repeat=1, warmup=0))[0]


async def point_carmulti_process(n: int) -> float:
    return (await _ours(n, executor="process", workers=os.cpu_count() or 2, batch_size=512, lo=0, hi=0,
                        concurrency=None, repeat=1, warmup=1))[0]


async def point_gather(n: int) -> float:
    return (await _gather(n, 0, 0, None, 1))[0]


async def point_ppe(n: int) -> float:
    return (await _ppe(n, os.cpu_count() or 2, 1))[0]


def _register_points() -> None:
    from . import plot

    plot.register_system("carmulti local", "bench.fanout:point_carmulti_local", is_async=True)
    plot.register_system("asyncio.gather", "bench.fanout:point_gather", is_async=True)
    plot.register_system("carmulti process", "bench.fanout:point_carmulti_process", is_async=True, warmup_n=0)
    plot.register_system("ProcessPoolExecutor", "bench.fanout:point_ppe", is_async=True, warmup_n=0)


# -- CLI --------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "process", "ray"), default="local",
                   help="where carmulti runs the agents (default local)")
    p.add_argument("--nodes", type=int, default=0,
                   help="with --executor ray: a local Ray Cluster of 1..N nodes, agents/s per node count")
    p.add_argument("--agents", type=int, default=100_000, help="agents per run (default 100000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="worker processes (ours and the pool baseline; default: cpu count)")
    p.add_argument("--latency", type=parse_latency, default=(0.0, 0.0), metavar="LO[..HI]",
                   help="per-agent latency, e.g. 50ms..500ms (default 0)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="run a MapReduce with max_concurrent=C instead of one parallel Swarm")
    p.add_argument("--max-wall-ratio", type=float, default=None, metavar="R",
                   help="with --latency: target wall time at most R x the ideal (default 2 when every agent is "
                        "in flight at once, --concurrency >= --agents, as issue 13's million-agent run; else 1.1)")
    p.add_argument("--max-rss-mib", type=float, default=None, metavar="MIB",
                   help="with --latency: target peak RSS of coordinator + workers below MIB (default 4096 when every "
                        "agent is in flight at once; else none)")
    p.add_argument("--batch-size", type=int, default=512, help="ProcessExecutor batch_size (default 512)")
    p.add_argument("--peers", action="store_true", help="also LangGraph (local) / Ray (process): pip install '.[bench-peers]'")
    p.add_argument("--plot", metavar="PNG", default=None, help="sweep N and draw agents/s and peak RSS against N")
    p.add_argument("--sweep", default="1000,10000,100000", help="N values for --plot (default 1000,10000,100000)")
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    n, lo, hi = args.agents, args.latency[0], args.latency[1]
    conc = args.concurrency
    all_at_once = conc is not None and conc >= n  # issue 13: wall <= 2x the ideal and peak RSS < 4 GiB
    if args.max_wall_ratio is None:
        args.max_wall_ratio = 2.0 if all_at_once else 1.1
    if args.max_rss_mib is None and all_at_once:
        args.max_rss_mib = 4096.0
    shape = f"MapReduce(max_concurrent={conc})" if conc else "parallel Swarm"
    report = Report("fanout", {"executor": args.executor, "agents": n, "workers": args.workers if args.executor == "process" else None,
                               "latency_s": [lo, hi], "pattern": shape, "repeat": args.repeat})
    label = f"carmulti {shape}, {args.executor}"
    rss: list[tuple[int, int]] | None = [] if hi > 0 else None
    with progress("fanout", label, args.repeat) as tick:
        ours = carmulti.run(_ours(n, executor=args.executor, workers=args.workers, batch_size=args.batch_size, lo=lo,
                                  hi=hi, concurrency=conc, repeat=args.repeat, warmup=args.warmup, tick=tick, rss=rss))
    if hi > 0:
        total = sum(agent_latency(i, lo, hi) for i in range(n))
        width = conc if conc else n
        ideal = total / min(width, n)
        walls = [n / r for r in ours]
        report.add(Row(f"{label}: wall / ideal (sum latency / concurrency)", median(walls) / ideal, "x", runs=[w / ideal for w in walls],
                       note=f"ideal {ideal:.2f} s", max_value=args.max_wall_ratio))
        report.extra.update({"ideal_wall_s": ideal, "walls_s": walls})
        if rss:
            # Everything the run holds at its peak (coordinator plus workers), spread over the agents in flight at once.
            in_flight = min(conc or n, n)
            peaks = [float(p) for _, p in rss]
            per_agent = [(p - b) / in_flight for b, p in rss]
            report.add(Row(f"{label}: peak RSS, coordinator + workers", median(peaks) / 2**20, "MiB",
                           runs=[p / 2**20 for p in peaks], max_value=args.max_rss_mib))
            report.add(Row(f"{label}: bytes per in-flight agent ({in_flight:,} at once)", median(per_agent), "B",
                           runs=per_agent, note="(peak - before) / agents in flight"))
            report.extra.update({"rss_before_bytes": [b for b, _ in rss], "rss_peak_bytes": peaks})
        with progress("fanout", "asyncio.gather (+Semaphore)", args.repeat) as tick:
            base = carmulti.run(_gather(n, lo, hi, conc, args.repeat, tick))
        report.add(Row(label, median(ours), "agents/s", median(base), "asyncio.gather (+Semaphore)", ours, base))
        return report.finish(args.json, args.check)
    if args.executor == "ray":
        return _main_ray(args, report, label)
    if args.executor == "local":
        with progress("fanout", "bare asyncio.gather", args.repeat) as tick:
            base = carmulti.run(_gather(n, 0, 0, conc, args.repeat, tick))
        report.add(Row(label, median(ours), "agents/s", median(base), "bare asyncio.gather on uvloop", ours, base, target=0.6))
        if args.peers:
            from . import peers

            for _ in range(args.warmup):
                carmulti.run(peers.langgraph_send_fanout(min(n, 256)))
            lg = repeats("fanout", "LangGraph Send", args.repeat, lambda: carmulti.run(peers.langgraph_send_fanout(n)))
            report.add(Row(label, median(ours), "agents/s", median(lg), "LangGraph Send + operator.add", ours, lg, target=20.0))
    else:
        with progress("fanout", f"ProcessPoolExecutor({args.workers})", args.repeat) as tick:
            base = carmulti.run(_ppe(n, args.workers, args.repeat, tick))
        report.add(Row(label, median(ours), "agents/s", median(base), f"ProcessPoolExecutor({args.workers}), future per agent",
                       ours, base, target=5.0))
        size = job_frame_bytes()
        with progress("fanout", "raw pyzmq DEALER/ROUTER", args.repeat) as tick:
            raw = _raw_zmq(n, size, args.repeat, tick)
        report.add(Row(label, median(ours), "agents/s", median(raw), f"raw pyzmq DEALER/ROUTER, {size} B round trips", ours, raw,
                       target=0.8, min_value=100_000))
        with progress("fanout", "minimal engine", args.repeat) as tick:
            least = minimal_engine(n, args.workers, args.batch_size, args.repeat, tick)
        report.add(Row(label, median(ours), "agents/s", median(least),
                       f"minimal engine: {args.workers} workers, asyncio task per agent, orjson frames over pyzmq",
                       ours, least, note="what carmulti adds per agent costs the rest (bench/minimal_engine.py)"))
        if args.peers:
            from . import peers

            try:
                for _ in range(args.warmup):
                    peers.ray_tasks_fanout(min(n, 256))
                ray = repeats("fanout", "Ray tasks", args.repeat, lambda: peers.ray_tasks_fanout(n))
            finally:
                peers.shutdown_ray()
            report.add(Row(label, median(ours), "agents/s", median(ray), "Ray tasks, num_cpus=2", ours, ray, target=25.0))
    if args.plot:
        from . import plot

        _register_points()
        systems = ["carmulti local", "asyncio.gather"] if args.executor == "local" else ["carmulti process", "ProcessPoolExecutor"]
        if args.peers:
            systems.append("LangGraph Send" if args.executor == "local" else "Ray tasks")
        ns = [int(x) for x in args.sweep.split(",") if x.strip()]
        rows = plot.sweep(systems, ns)
        plot.plot_sweep(rows, args.plot)
        report.extra["sweep"] = rows
        print(f"wrote {args.plot}")
    return report.finish(args.json, args.check)


def _main_ray(args: argparse.Namespace, report: Report, label: str) -> int:
    """``--executor ray``: ours on a local Ray (or a Cluster of 1..N nodes), beside Ray's own fan-outs."""
    from . import ray_bench

    n, lo, hi, conc = args.agents, args.latency[0], args.latency[1], args.concurrency
    counts = list(range(1, args.nodes + 1)) if args.nodes else [0]
    for k in counts:
        address = ray_bench.ray_up(k)
        try:
            where = f"{label}, {k} node{'s' if k > 1 else ''}" if k else label
            with progress("fanout", where, args.repeat) as tick:
                ours = carmulti.run(_ours(n, executor="ray", workers=None if k else args.workers,
                                          batch_size=args.batch_size, lo=lo, hi=hi, concurrency=conc,
                                          repeat=args.repeat, warmup=args.warmup, tick=tick, ray_address=address))
            if hi > 0:
                total = sum(agent_latency(i, lo, hi) for i in range(n))
                ideal = total / min(conc or n, n)
                walls = [n / r for r in ours]
                report.add(Row(f"{where}: wall / ideal (sum latency / concurrency)", median(walls) / ideal, "x",
                               runs=[w / ideal for w in walls], note=f"ideal {ideal:.2f} s",
                               max_value=args.max_wall_ratio))
                continue
            if k != counts[-1]:
                report.add(Row(where, median(ours), "agents/s", runs=ours))
                continue
            with progress("fanout", "Ray tasks, one per agent", args.repeat) as tick:
                tasks = ray_bench.ray_tasks(n, args.repeat, tick)
            report.add(Row(where, median(ours), "agents/s", median(tasks), "Ray tasks, one per agent (num_cpus=1)",
                           ours, tasks, target=20.0))
            actors = args.workers if not k else k
            with progress("fanout", f"ray.util.ActorPool({actors})", args.repeat) as tick:
                pool = ray_bench.ray_actor_pool(n, actors, args.repeat, tick)
            report.add(Row(where, median(ours), "agents/s", median(pool), f"ray.util.ActorPool({actors} actors)",
                           ours, pool))
        finally:
            ray_bench.ray_down()
    return report.finish(args.json, args.check)
