"""carcore micro-benchmarks against plain-Python baselines, in the same process.

* ``StateStore`` set/get vs a plain ``dict``;
* overlay write+merge (100 keys) vs a child ``dict`` folded into the parent;
* ``EventLog.append`` in memory vs ``list.append``;
* ``EventLog.append`` journaled (``fsync="batch"``) vs ``list.append`` + an
  orjson line written and flushed to an append-mode file (same durability:
  each record reaches the OS before the call returns);
* budget ``begin_agent``-style reservations from 2 processes on the
  shared-memory counters vs ``multiprocessing.Value`` with its lock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, TypeVar

import orjson

from carcore import BudgetCounters, EventLog, StateStore

from ._report import Report, Row, add_common_arguments, median, repeats


#: Target for journaled appends (``fsync="batch"``).
JOURNAL_TARGET_APPENDS_PER_S = 200_000

_A = TypeVar("_A")


def _rate(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_state_set(n: int) -> tuple[float, float]:
    keys = [f"key{i % 1000}" for i in range(n)]

    def ours() -> None:
        s = StateStore()
        st = s.set
        for i, k in enumerate(keys):
            st(k, i)

    def base() -> None:
        d: dict[str, int] = {}
        for i, k in enumerate(keys):
            d[k] = i

    return _rate(n, ours), _rate(n, base)


def bench_state_get(n: int) -> tuple[float, float]:
    keys = [f"key{i % 1000}" for i in range(n)]
    s = StateStore()
    d = {}
    for i in range(1000):
        s.set(f"key{i}", {"v": i})
        d[f"key{i}"] = {"v": i}

    def ours() -> None:
        g = s.get
        for k in keys:
            g(k)

    def base() -> None:
        g = d.get
        for k in keys:
            g(k)

    return _rate(n, ours), _rate(n, base)


def bench_overlay_merge(n: int) -> tuple[float, float]:
    keys = [f"k{j}" for j in range(100)]

    def ours() -> None:
        s = StateStore()
        for _ in range(n):
            o = s.overlay("agent")
            for j, k in enumerate(keys):
                o.set(k, j)
            o.merge_to_parent()

    def base() -> None:
        parent: dict[str, int] = {}
        for _ in range(n):
            child: dict[str, int] = {}
            for j, k in enumerate(keys):
                child[k] = j
            parent.update(child)

    return _rate(n, ours), _rate(n, base)


def bench_log_memory(n: int) -> tuple[float, float]:
    def ours() -> None:
        log = EventLog()
        ap = log.append
        for i in range(n):
            ap("action_succeeded", {"i": i}, agent="a1")

    def base() -> None:
        lst: list[dict[str, Any]] = []
        for i in range(n):
            lst.append({"kind": "action_succeeded", "data": {"i": i}, "agent": "a1", "ts_ns": time.time_ns()})

    return _rate(n, ours), _rate(n, base)


def bench_log_journal(n: int, tmp: str) -> tuple[float, float]:
    def ours() -> None:
        path = os.path.join(tmp, "ours.log")
        if os.path.exists(path):
            os.unlink(path)
        with EventLog(path, fsync="batch") as log:
            ap = log.append
            for i in range(n):
                ap("action_succeeded", {"i": i}, agent="a1")

    def base() -> None:
        path = os.path.join(tmp, "base.log")
        lst: list[dict[str, Any]] = []
        with open(path, "ab") as f:
            last = time.monotonic()
            for i in range(n):
                rec = {"seq": i, "kind": "action_succeeded", "data": {"i": i}, "agent": "a1", "ts_ns": time.time_ns()}
                lst.append(rec)
                f.write(orjson.dumps(rec) + b"\n")
                f.flush()
                if time.monotonic() - last >= 0.01:  # the same group-commit window as ours
                    os.fdatasync(f.fileno())
                    last = time.monotonic()
            os.fdatasync(f.fileno())
        os.unlink(path)

    return _rate(n, ours), _rate(n, base)


# -- budget from 2 processes ---------------------------------------------------------
def _ours_child(name: str, m: int, cap: int, start: Event, out: Queue[int]) -> None:  # pragma: no cover - child process
    c = BudgetCounters.attach(name)
    start.wait()
    got = 0
    res = c.reserve
    for _ in range(m):
        if res(0, 1, cap):
            got += 1
    c.close()
    out.put(got)


def _base_child(v: Synchronized[int], m: int, cap: int, start: Event, out: Queue[int]) -> None:  # pragma: no cover - child process
    start.wait()
    got = 0
    lock = v.get_lock()
    for _ in range(m):
        with lock:
            if v.value < cap:
                v.value += 1
                got += 1
    out.put(got)


def _run_procs(target: Callable[[_A, int, int, Event, Queue[int]], None], first_arg: _A, m: int, procs: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    out: Queue[int] = ctx.Queue()
    cap = m * procs  # every reservation admitted: we time the reservation path itself
    ps = [ctx.Process(target=target, args=(first_arg, m, cap, start, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.3)  # let the children import and park on the event
    t0 = time.perf_counter()
    start.set()
    total = sum(out.get(timeout=120) for _ in ps)
    wall = time.perf_counter() - t0
    for p in ps:
        p.join(timeout=30)
    assert total == cap, f"admitted {total}, expected {cap}"
    return total / wall


def bench_budget_procs(m: int, procs: int = 2) -> tuple[float, float]:
    counters = BudgetCounters(1)
    try:
        ours = _run_procs(_ours_child, counters.name, m, procs)
    finally:
        counters.close()
    v: Synchronized[int] = multiprocessing.get_context("spawn").Value("q", 0)
    base = _run_procs(_base_child, v, m, procs)
    return ours, base


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=200_000, help="operations per measured run (default 200000)")
    p.add_argument("--budget-ops", type=int, default=500_000, help="reservations per process (default 500000)")
    add_common_arguments(p)


def _pair(report: Report, name: str, unit: str, runs: list[tuple[float, float]], base_name: str,
          target: float | None = None) -> None:
    ours = [r[0] for r in runs]
    base = [r[1] for r in runs]
    report.add(Row(name, median(ours), unit, median(base), base_name, ours, base, target))


def main(args: argparse.Namespace) -> int:
    n = args.n
    report = Report("core", {"n": n, "budget_ops": args.budget_ops, "repeat": args.repeat})
    rep, wu = args.repeat, args.warmup

    def pairs(fn: Callable[[], tuple[float, float]], label: str) -> list[tuple[float, float]]:
        return repeats("core", label, max(1, rep), fn)

    for _ in range(wu):
        bench_state_set(min(n, 20_000))
    _pair(report, "StateStore.set", "ops/s", pairs(lambda: bench_state_set(n), "state set"), "dict[k] = v")
    _pair(report, "StateStore.get (dict value)", "ops/s", pairs(lambda: bench_state_get(n), "state get"), "dict.get")
    _pair(report, "overlay 100 writes + merge", "merges/s",
          pairs(lambda: bench_overlay_merge(max(1, n // 100)), "overlay"), "child dict + update")
    _pair(report, "EventLog.append (memory)", "appends/s", pairs(lambda: bench_log_memory(n), "log mem"), "list.append")
    with tempfile.TemporaryDirectory(prefix="carmulti-bench-") as tmp:
        runs = pairs(lambda: bench_log_journal(n, tmp), "log journal")
    _pair(report, "EventLog.append (journal, batch fsync)", "appends/s", runs, "list + file write/flush")
    report.rows[-1].min_value = JOURNAL_TARGET_APPENDS_PER_S
    report.extra["journal_target_appends_per_s"] = JOURNAL_TARGET_APPENDS_PER_S
    runs = repeats("core", "budget reserve, 2 processes", max(1, min(rep, 3)), lambda: bench_budget_procs(args.budget_ops))
    _pair(report, "budget reserve, 2 processes", "ops/s", runs, "mp.Value + lock", target=10.0)
    return report.finish(args.json, args.check)
