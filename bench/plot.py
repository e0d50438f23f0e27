"""``--plot out.png``: agents/s and peak RSS against N, one line per system.

Rows are plain dicts ``{"system": str, "n": int, "agents_per_s": float,
"peak_rss_mib": float}`` (extra keys are ignored; several rows for one
``(system, n)`` are reduced to their median).

Peak RSS of one run cannot be read in a process that has already run something
bigger, so each point of a sweep runs in a fresh interpreter:
``measure_point(system, n)`` starts ``python -c``, which imports the system's
function from ``SYSTEMS``, warms it up on a small N, runs it once at N and
prints agents/s and memory as JSON. ``SYSTEMS`` holds the peers this module
knows ("LangGraph Send", "Ray tasks"); another scenario adds its own with
``register_system`` (the spec travels to the child on its command line, so a
registration made at run time in the parent is enough).

Memory per point: the peak RSS of the child itself (``VmHWM``; not ``ru_maxrss``,
which Linux carries over from the parent across fork+exec), ``ru_maxrss`` of its
largest reaped descendant, and -- with psutil -- the sampled
peak (every 20 ms) of the summed RSS of the child and all its live descendants,
which is what a multi-process system (Ray, a process pool) costs. ``peak_rss_mib``
is the largest of these: the sum over processes counts shared pages once per
process, so for multi-process systems it is an upper bound.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable

_MARK = "BENCH_POINT "
ROOT = Path(__file__).resolve().parent.parent  # the checkout: bench/ is not an installed package


@dataclass(frozen=True)
class System:
    """How to run one point of a system in a fresh interpreter.

    ``target`` is ``"module:function"``; the function takes ``n`` and returns agents/s
    (a coroutine function if ``is_async``: it is run on uvloop). ``teardown``
    (``"module:function"``, no arguments) runs after the measured run, before
    memory is read. ``warmup_n``: a first, unmeasured run of this size (0: none).
    """

    target: str
    is_async: bool = False
    teardown: str | None = None
    warmup_n: int = 100


SYSTEMS: dict[str, System] = {
    "LangGraph Send": System("bench.peers:langgraph_send_fanout", is_async=True),
    "Ray tasks": System("bench.peers:ray_tasks_fanout", teardown="bench.peers:shutdown_ray"),
}

#: Line style per system: ours solid, their bare-stdlib baselines dashed, peer frameworks dotted.
STYLES: dict[str, dict[str, Any]] = {
    "carmulti local": {"color": "#1f77b4", "linestyle": "-", "marker": "o"},
    "asyncio.gather": {"color": "#1f77b4", "linestyle": "--", "marker": "s", "alpha": 0.7},
    "carmulti process": {"color": "#d62728", "linestyle": "-", "marker": "o"},
    "ProcessPoolExecutor": {"color": "#d62728", "linestyle": "--", "marker": "s", "alpha": 0.7},
    "LangGraph Send": {"color": "#2ca02c", "linestyle": ":", "marker": "^"},
    "Ray tasks": {"color": "#9467bd", "linestyle": ":", "marker": "v"},
}
_FALLBACK_COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def register_system(name: str, target: str, *, is_async: bool = False, teardown: str | None = None,
                    warmup_n: int = 100, style: dict[str, Any] | None = None) -> None:
    """Make ``measure_point(name, n)`` run ``target`` (``"module:function"``); see ``System``."""
    SYSTEMS[name] = System(target, is_async=is_async, teardown=teardown, warmup_n=warmup_n)
    if style:
        STYLES[name] = style


# --------------------------------------------------------------------------- one point, fresh process


def measure_point(system: str, n: int, *, timeout: float = 600.0, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``system`` once at ``n`` in a fresh interpreter; a row for ``plot_sweep``.

    Returns ``{"system", "n", "agents_per_s", "peak_rss_mib", "rss_self_mib",
    "rss_children_mib", "rss_tree_peak_mib", "extra"}`` (``extra``: e.g. Ray's setup timings).
    Raises ``KeyError`` for an unknown system and ``RuntimeError`` if the child fails.
    """
    spec = SYSTEMS[system]
    code = "import sys, json; from bench.plot import _child_main; _child_main(json.loads(sys.argv[1]), int(sys.argv[2]))"
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH")]))
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(spec)), str(n)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=child_env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{system} at n={n} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    row: dict[str, Any] = json.loads(lines[-1][len(_MARK):])
    row["system"] = system
    return row


def sweep(systems: Iterable[str], ns: Iterable[int], *, timeout: float = 600.0) -> list[dict[str, Any]]:
    """``measure_point`` for every system and N (one fresh process each)."""
    ns = list(ns)
    return [measure_point(s, n, timeout=timeout) for s in systems for n in ns]


def _load(target: str) -> Any:
    import importlib

    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _vm_hwm_mib() -> float | None:
    """This process's peak RSS (``VmHWM`` in /proc/self/status), in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _child_main(spec: dict[str, Any], n: int) -> None:
    """In the fresh interpreter: warm up, run once at ``n``, tear down, print the JSON row."""
    import importlib.util
    import resource
    import threading

    s = System(**spec)
    fn = _load(s.target)

    sampler_stop = threading.Event()
    tree_peak = [0.0]

    def sample() -> None:
        import psutil

        me = psutil.Process()
        while not sampler_stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            tree_peak[0] = max(tree_peak[0], total / 2**20)
            sampler_stop.wait(0.02)

    has_psutil = importlib.util.find_spec("psutil") is not None
    sampler = threading.Thread(target=sample, daemon=True) if has_psutil else None

    def run(k: int) -> float:
        if s.is_async:
            import uvloop

            async_rate: Callable[[int], Coroutine[Any, Any, float]] = fn  # System.target's contract
            return uvloop.run(async_rate(k))
        sync_rate: Callable[[int], float] = fn
        return sync_rate(k)

    try:
        if s.warmup_n:
            run(min(n, s.warmup_n))
        if sampler:
            sampler.start()
        rate = run(n)
    finally:
        sampler_stop.set()
        if sampler and sampler.is_alive():
            sampler.join()
    extra: dict[str, Any] = {}
    if s.target.startswith("bench.peers:ray"):
        from bench.peers import RAY_TIMINGS

        extra["ray_setup_s"] = dict(RAY_TIMINGS)
    if s.teardown:
        _load(s.teardown)()
    # Not ru_maxrss for ourselves: Linux keeps the pre-exec maximum across fork+exec, so a
    # child of a big parent would report the parent's size. VmHWM belongs to this image only.
    rss_self = _vm_hwm_mib()
    if rss_self is None:
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rss_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    tree = tree_peak[0] or None
    peak = max(rss_self, tree) if tree else rss_self + rss_kids  # without psutil: self + largest child
    row = {"n": n, "agents_per_s": rate, "peak_rss_mib": peak, "rss_self_mib": rss_self,
           "rss_children_mib": rss_kids, "rss_tree_peak_mib": tree, "extra": extra}
    sys.stdout.write(_MARK + json.dumps(row) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the picture


def _si(x: float, _pos: Any = None) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.0f}{suf}" if v == int(v) or v >= 10 else f"{v:.1f}{suf}"
    return f"{x:.0f}" if x >= 1 else f"{x:.2g}"


def plot_sweep(rows: list[dict[str, Any]], path: str, *, title: str | None = None, subtitle: str | None = None) -> None:
    """Two panels side by side: agents/s vs N and peak RSS (MiB) vs N, both with log-x.

    agents/s also has a log-y axis (systems differ by orders of magnitude). Written as PNG
    (or whatever ``path``'s extension says) with matplotlib's Agg backend.
    """
    if not rows:
        raise ValueError("plot_sweep: no rows")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # (system, n) -> values, median over repeats; systems in first-seen order
    systems: list[str] = []
    rates: dict[str, dict[int, list[float]]] = {}
    rss: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        s, n = str(r["system"]), int(r["n"])
        if s not in rates:
            systems.append(s)
            rates[s], rss[s] = {}, {}
        if r.get("agents_per_s") is not None:
            rates[s].setdefault(n, []).append(float(r["agents_per_s"]))
        if r.get("peak_rss_mib") is not None:
            rss[s].setdefault(n, []).append(float(r["peak_rss_mib"]))

    fig, (ax_rate, ax_mem) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110)
    fallback = iter(_FALLBACK_COLORS * 4)
    for s in systems:
        style = dict(STYLES.get(s) or {"color": next(fallback), "linestyle": "-", "marker": "D"})
        for ax, data in ((ax_rate, rates[s]), (ax_mem, rss[s])):
            ns = sorted(data)
            if ns:
                ax.plot(ns, [statistics.median(data[n]) for n in ns], label=s, linewidth=2, markersize=6, **style)

    all_n = sorted({int(r["n"]) for r in rows})
    for ax in (ax_rate, ax_mem):
        ax.set_xscale("log")
        if 1 < len(all_n) <= 10:
            ax.set_xticks(all_n)  # tick exactly the measured N
        else:
            ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(all_n) > 1:
            ax.set_xlim(all_n[0] / 1.5, all_n[-1] * 1.5)
        ax.set_xlabel("N (agents fanned out in one run, log scale)")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    ax_rate.set_yscale("log")
    ax_rate.yaxis.set_major_formatter(FuncFormatter(_si))
    ys = [v for d in rates.values() for vs in d.values() for v in vs if v > 0]
    if ys and max(ys) / min(ys) < 100:  # few decades: label the 2x and 5x minor ticks too, same style
        ax_rate.yaxis.set_minor_formatter(FuncFormatter(lambda y, _p: _si(y) if f"{y:.0e}"[0] in "25" else ""))
    else:
        ax_rate.yaxis.set_minor_formatter(NullFormatter())
    ax_rate.set_ylabel("throughput (agents/s, log scale; higher is better)")
    ax_rate.set_title("Throughput")
    ax_mem.set_ylim(bottom=0)
    ax_mem.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{y:,.0f}"))
    ax_mem.set_ylabel("peak RSS (MiB; lower is better)")
    ax_mem.set_title("Peak memory (all processes of the system)")

    handles, labels = ax_rate.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_mem.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, fontsize=10)
    fig.suptitle(title or "carmulti fan-out vs baselines: zero-latency agents", fontsize=14, fontweight="bold")
    if subtitle is None:
        import platform

        subtitle = (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}; "
                    "each point: one run in a fresh process after a warm-up")
    fig.text(0.5, 0.905, subtitle, ha="center", fontsize=9.5, color="#555555")
    fig.tight_layout(rect=(0, 0.08, 1, 0.9))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
