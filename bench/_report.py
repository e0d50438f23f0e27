"""Measuring and reporting for the scenarios: medians of repeated runs, ratios
against baselines measured in the same process, a rich table on stdout, a
``--json`` file with every figure and the machine description."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

from ._util import machine, peak_rss_mib


def add_common_arguments(p: argparse.ArgumentParser, *, repeat: int = 5) -> None:
    """``--repeat``, ``--warmup``, ``--json``: shared by every measuring scenario."""
    p.add_argument("--repeat", type=int, default=repeat, help=f"measured runs per figure; the median is quoted (default {repeat})")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every figure and the machine description here")


@dataclass
class Row:
    """One measured figure: ours beside its baseline."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    target: float | None = None  # minimum ratio we aim for
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """ours / baseline (higher is better: every figure is a rate)."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "baseline": self.baseline,
                "baseline_name": self.baseline_name, "ratio": self.ratio, "runs": self.runs,
                "baseline_runs": self.baseline_runs, "target_ratio": self.target, "note": self.note}


class Report:
    """Collects rows for one scenario run and prints them."""

    def __init__(self, scenario: str, params: dict[str, Any]) -> None:
        self.scenario = scenario
        self.params = params
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "params": self.params, "machine": machine(),
                "rows": [r.to_dict() for r in self.rows], "extra": self.extra,
                "peak_rss_mib": peak_rss_mib(), "peak_rss_largest_child_mib": peak_rss_mib(children=True),
                "wall_s": time.perf_counter() - self.t0}

    def print(self) -> None:
        try:
            from rich.console import Console
            from rich.markup import escape
            from rich.table import Table
        except ImportError:  # rich is in the bench extra; degrade to plain text
            self._print_plain()
            return
        table = Table(title=f"bench {self.scenario}  " + "  ".join(f"{k}={v}" for k, v in self.params.items()))
        for col in ("figure", "ours", "baseline", "baseline is", "ratio", "target"):
            table.add_column(col, justify="right" if col not in ("figure", "baseline is") else "left")
        for r in self.rows:
            ratio = r.ratio
            status = ""
            if ratio is not None and r.target is not None:
                status = " ok" if ratio >= r.target else " MISSED"
            table.add_row(escape(r.name), f"{_fmt(r.value)} {r.unit}", "" if r.baseline is None else f"{_fmt(r.baseline)} {r.unit}",
                          escape(r.baseline_name or ""), "" if ratio is None else f"{ratio:.2f}x",
                          "" if r.target is None else f">= {r.target}x{status}")
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        console.print(table)
        print(f"peak RSS {peak_rss_mib():.0f} MiB (largest child process {peak_rss_mib(children=True):.0f} MiB)")

    def _print_plain(self) -> None:
        for r in self.rows:
            extra = "" if r.ratio is None else f"  baseline {_fmt(r.baseline or 0)} ({r.baseline_name})  ratio {r.ratio:.2f}x"
            print(f"{r.name:40s} {_fmt(r.value)} {r.unit}{extra}")

    def finish(self, json_path: str | None) -> int:
        self.print()
        if json_path:
            with open(json_path, "wb") as f:
                f.write(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))
            print(f"wrote {json_path}")
        return 0


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:,.2f}"
    return f"{x:.4g}"


def measure(fn: Callable[[], float], repeat: int, warmup: int, label: str = "") -> list[float]:
    """Call ``fn`` ``warmup`` times unmeasured then ``repeat`` times; ``fn`` returns its own rate."""
    for _ in range(max(0, warmup)):
        fn()
    out = []
    with progress(repeat, label) as tick:
        for _ in range(max(1, repeat)):
            out.append(fn())
            tick()
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr (only on a terminal; silent otherwise)."""
    if not label or not sys.stderr.isatty():
        yield lambda: None
        return
    try:
        from rich.progress import Progress
    except ImportError:
        yield lambda: None
        return
    with Progress(transient=True) as prog:
        task = prog.add_task(label, total=total)
        yield lambda: prog.advance(task)
