"""Measuring and reporting for the scenarios: medians of repeated runs, ratios
against baselines measured in the same process, targets decided pass/fail, a
rich table on stdout, a ``--json`` file with every figure and the machine
description, and a transient progress display on stderr while repeats run."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import orjson

from ._util import machine, peak_rss_mib

T = TypeVar("T")


def add_common_arguments(p: argparse.ArgumentParser, *, repeat: int = 5) -> None:
    """``--repeat``, ``--warmup``, ``--json``, ``--check``: shared by every measuring scenario."""
    p.add_argument("--repeat", type=int, default=repeat, help=f"measured runs per figure; the median is quoted (default {repeat})")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every figure and the machine description here")
    add_check_argument(p)


def add_check_argument(p: argparse.ArgumentParser) -> None:
    """``--check``: exit 1 when a figure misses one of its targets."""
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 if a figure misses its target (the table's target column), "
                        "after printing which targets were missed")


@dataclass
class Row:
    """One measured figure: ours beside its baseline, with the targets it is checked against.

    Every target is decided pass/fail (:meth:`checks`): ``target`` is a minimum
    ratio ours / baseline (a missing baseline misses it), ``min_value`` and
    ``max_value`` bound the figure itself, in its ``unit``.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    target: float | None = None  # minimum ratio ours / baseline
    note: str = ""
    min_value: float | None = None  # the figure must be >= this (in unit)
    max_value: float | None = None  # the figure must be <= this (in unit)

    @property
    def ratio(self) -> float | None:
        """ours / baseline (higher is better: every figure is a rate)."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def _targets(self) -> list[tuple[str, str, float, bool]]:
        """(of, op, threshold, met) per target."""
        out = []
        if self.target is not None:
            ratio = self.ratio
            out.append(("ratio", ">=", self.target, ratio is not None and ratio >= self.target))
        if self.min_value is not None:
            out.append(("value", ">=", self.min_value, self.value >= self.min_value))
        if self.max_value is not None:
            out.append(("value", "<=", self.max_value, self.value <= self.max_value))
        return out

    def checks(self) -> list[tuple[str, bool]]:
        """(description, met) of each target, e.g. ``("ratio >= 0.5x", True)`` or ``("<= 4,096 MiB", False)``."""
        out = []
        for of, op, threshold, met in self._targets():
            if of == "ratio":
                text = f"ratio {op} {threshold:g}x" + ("" if self.ratio is not None else " (no baseline figure)")
            else:
                num = f"{int(threshold):,}" if float(threshold).is_integer() else f"{threshold:g}"
                text = f"{op} {num}{'' if self.unit == 'x' else ' '}{self.unit}"
            out.append((text, met))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "baseline": self.baseline,
                "baseline_name": self.baseline_name, "ratio": self.ratio, "runs": self.runs,
                "baseline_runs": self.baseline_runs, "target_ratio": self.target, "note": self.note,
                "targets": [{"of": of, "op": op, "threshold": t, "met": met} for of, op, t, met in self._targets()]}


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
        except ImportError:  # (rich is a dependency of carmulti) degrade to plain text
            self._print_plain()
            return
        table = Table(title=f"bench {self.scenario}  " + "  ".join(f"{k}={v}" for k, v in self.params.items()))
        for col in ("figure", "ours", "baseline", "baseline is", "ratio", "target"):
            table.add_column(col, justify="right" if col not in ("figure", "baseline is") else "left")
        for r in self.rows:
            ratio = r.ratio
            target = "; ".join(f"{text} {'ok' if met else 'MISSED'}" for text, met in r.checks())
            table.add_row(escape(r.name), f"{_fmt(r.value)} {r.unit}", "" if r.baseline is None else f"{_fmt(r.baseline)} {r.unit}",
                          escape(r.baseline_name or ""), "" if ratio is None else f"{ratio:.2f}x", escape(target))
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        console.print(table)
        print(f"peak RSS {peak_rss_mib():.0f} MiB (largest child process {peak_rss_mib(children=True):.0f} MiB)")

    def _print_plain(self) -> None:
        for r in self.rows:
            extra = "" if r.ratio is None else f"  baseline {_fmt(r.baseline or 0)} ({r.baseline_name})  ratio {r.ratio:.2f}x"
            target = "".join(f"  target {text} {'ok' if met else 'MISSED'}" for text, met in r.checks())
            print(f"{r.name:40s} {_fmt(r.value)} {r.unit}{extra}{target}")

    def finish(self, json_path: str | None, check: bool = False) -> int:
        """Print the table, write ``json_path``; with ``check``, print the missed targets.

        Returns:
            The exit status: 1 when ``check`` is set and a target was missed, else 0.
        """
        self.print()
        if json_path:
            with open(json_path, "wb") as f:
                f.write(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))
            print(f"wrote {json_path}")
        if not check:
            return 0
        return check_targets([(f"{r.name}: {_fmt(r.value)} {r.unit}" + ("" if r.ratio is None else f", ratio {r.ratio:.2f}x"),
                               text, met) for r in self.rows for text, met in r.checks()])


def check_targets(results: list[tuple[str, str, bool]]) -> int:
    """Print the ``--check`` verdict for ``(figure, target, met)`` triples; 1 if any was missed, else 0."""
    missed = [(fig, text) for fig, text, met in results if not met]
    n = len(results)
    if not missed:
        print(f"check: all {n} target{'s' if n != 1 else ''} met" if n else "check: this run has no targets")
        return 0
    print(f"check: {len(missed)} of {n} target{'s' if n != 1 else ''} missed")
    for fig, text in missed:
        print(f"  MISSED {fig}; target {text}")
    return 1


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:,.2f}"
    return f"{x:.4g}"


def measure(fn: Callable[[], float], repeat: int, warmup: int, label: str = "", scenario: str = "") -> list[float]:
    """Call ``fn`` ``warmup`` times unmeasured then ``repeat`` times; ``fn`` returns its own rate."""
    for _ in range(max(0, warmup)):
        fn()
    return repeats(scenario, label, max(1, repeat), fn)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def repeats(scenario: str, label: str, n: int, fn: Callable[[], T]) -> list[T]:
    """``[fn() for _ in range(n)]`` under a :func:`progress` display."""
    out: list[T] = []
    with progress(scenario, label, n) as done:
        for _ in range(n):
            out.append(fn())
            done()
    return out


@contextlib.contextmanager
def progress(scenario: str, label: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient progress line on stderr while ``total`` repeats of one figure run.

    Shows ``bench {scenario}: {label}``, a bar, ``repeat k/n`` (the repeat
    running) and the elapsed time, and is erased when the block ends. Only when
    stderr is a terminal and rich is installed; otherwise nothing is written.
    One display at a time: do not nest.

    Yields:
        A function to call after each repeat.
    """
    if not sys.stderr.isatty():
        yield lambda: None
        return
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        yield lambda: None
        return
    total = max(1, total)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("repeat {task.fields[k]}/{task.total:.0f}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, redirect_stdout=False,
                  redirect_stderr=False) as prog:
        task = prog.add_task(escape(f"bench {scenario}: {label}" if scenario else label), total=total, k=1)
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            prog.update(task, advance=1, k=min(done + 1, total))

        yield advance
