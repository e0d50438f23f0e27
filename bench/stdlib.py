"""Real-corpus MapReduce over every .py file of the running Python's standard library (the default).

One mapper agent per file works through the carmulti Runtime: a ``read_file``
tool call, a ``stats`` tool call (parses the source with ``ast`` and counts
functions, classes and lines), and a ``state_write`` of the per-file stats into
its isolated overlay (merged into the shared store when the mapper succeeds).
The reducer totals the merged stats from the shared state. The totals are then
checked against a direct single-loop computation: prints ``OK``, or exits 1.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import sysconfig
import time
import tokenize
from typing import Any

import orjson

import carmulti
from carmulti import (
    Action,
    ActionProposal,
    AgentOutput,
    AgentSpec,
    MapReduce,
    SharedInfra,
    ToolError,
)

from ._report import add_check_argument, check_targets, progress
from ._util import peak_rss_mib

STATE_PREFIX = "stdlib.stats."
TOTAL_KEYS = ("files", "parsed", "failed", "functions", "classes", "lines")


def stdlib_files(root: str | None = None) -> list[str]:
    """Every ``.py`` file under the stdlib directory (``site-packages`` excluded), sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return out


def read_source(path: str) -> str:
    """Decode a source file the way Python does (PEP 263 coding cookie, BOM).

    Raises:
        ToolError: unreadable or undecodable.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError) as exc:
        raise ToolError(f"read_file {path}: {type(exc).__name__}: {exc}") from None


def source_stats(source: str) -> dict[str, int]:
    """Functions (sync + async), classes and lines of one module.

    Raises:
        ToolError: the source does not parse.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise ToolError(f"stats: {type(exc).__name__}: {exc}") from None
    functions = classes = 0
    for node in ast.walk(tree):
        t = type(node)
        if t is ast.FunctionDef or t is ast.AsyncFunctionDef:
            functions += 1
        elif t is ast.ClassDef:
            classes += 1
    return {"functions": functions, "classes": classes, "lines": len(source.splitlines())}


class StdlibTools:
    """The mapper's tool executor: ``read_file {path}`` and ``stats {source}``."""

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        if tool == "read_file":
            return read_source(params["path"])
        if tool == "stats":
            return source_stats(params["source"])
        raise ToolError(f"unknown tool: {tool}")


class StdlibRunner:
    """Mapper: read, parse, store stats. Reducer: total the stored stats."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        t0 = time.perf_counter()
        if spec.metadata.get("role") == "reducer":
            return self._reduce(spec, task, runtime, t0)
        path = task.rsplit("Item:\n", 1)[1]
        runtime.set_executor(StdlibTools())
        read = await runtime.execute(ActionProposal(f"{spec.name}-read", spec.name,
                                                    [Action.tool_call("read", "read_file", {"path": path})]))
        if not read.all_succeeded:
            raise ToolError(read.results[0].error or "read_file failed")
        stats_res = await runtime.execute(ActionProposal(f"{spec.name}-stats", spec.name,
                                                         [Action.tool_call("stats", "stats", {"source": read.results[0].output})]))
        if not stats_res.all_succeeded:
            raise ToolError(stats_res.results[0].error or "stats failed")
        stats = stats_res.results[0].output
        write = await runtime.execute(ActionProposal(f"{spec.name}-write", spec.name,
                                                     [Action.state_write("write", STATE_PREFIX + path, stats)]))
        if not write.all_succeeded:
            raise ToolError(write.results[0].error or "state_write failed")
        return AgentOutput(name=spec.name, answer=orjson.dumps(stats).decode(), turns=3, tool_calls=runtime.tool_calls,
                           tools_used=list(runtime.tools_used), duration_ms=(time.perf_counter() - t0) * 1000.0)

    def _reduce(self, spec: AgentSpec, task: str, runtime: Any, t0: float) -> AgentOutput:
        totals = dict.fromkeys(("parsed", "functions", "classes", "lines"), 0)
        state = runtime.state
        for key in state.keys():
            if key.startswith(STATE_PREFIX):
                s = state.get(key)
                totals["parsed"] += 1
                totals["functions"] += s["functions"]
                totals["classes"] += s["classes"]
                totals["lines"] += s["lines"]
        reported = task.count("\n- ")  # one line per succeeded mapper
        if reported != totals["parsed"]:
            raise ToolError(f"reducer saw {totals['parsed']} stats in state but {reported} succeeded mappers")
        return AgentOutput(name=spec.name, answer=orjson.dumps(totals).decode(), turns=1,
                           duration_ms=(time.perf_counter() - t0) * 1000.0)


def direct_totals(files: list[str]) -> dict[str, int]:
    """The same totals from a plain single loop (the check)."""
    t = dict.fromkeys(TOTAL_KEYS, 0)
    t["files"] = len(files)
    for path in files:
        try:
            s = source_stats(read_source(path))
        except ToolError:
            t["failed"] += 1
            continue
        t["parsed"] += 1
        t["functions"] += s["functions"]
        t["classes"] += s["classes"]
        t["lines"] += s["lines"]
    return t


async def run_mapreduce(files: list[str], *, max_concurrent: int, executor: Any = None) -> tuple[dict[str, int], float]:
    """Run the MapReduce; returns (totals, elapsed seconds)."""
    mapper = AgentSpec("mapper", "Count functions, classes and lines of one module.", tools=["read_file", "stats"],
                       metadata={"role": "mapper"})
    reducer = AgentSpec("reducer", "Total the per-file stats.", metadata={"role": "reducer"})
    async with SharedInfra(executor=executor) as infra:
        t0 = time.perf_counter()
        result = await MapReduce(mapper, reducer, max_concurrent=max_concurrent).with_isolation().run(
            "Count the functions, classes and lines of this standard-library module.", files, StdlibRunner(), infra)
        elapsed = time.perf_counter() - t0
    totals = dict.fromkeys(TOTAL_KEYS, 0)
    totals.update(orjson.loads(result.reduced_answer))
    totals["files"] = len(result.map_outputs)
    totals["failed"] = sum(1 for o in result.map_outputs if not o.succeeded)
    return totals, elapsed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="directory to scan instead of the stdlib")
    p.add_argument("--limit", type=int, default=None, help="only the first N files (smoke runs)")
    p.add_argument("--concurrency", type=int, default=64, help="mappers running at once (default 64)")
    p.add_argument("--executor", choices=("local", "process", "ray"), default="local",
                   help="where mappers run (default local; ray: RayExecutor on a local Ray)")
    p.add_argument("--workers", type=int, default=2, help="worker processes / actors for process and ray (default 2)")
    p.add_argument("--max-seconds", type=float, default=60.0, metavar="S",
                   help="target: the MapReduce takes at most S seconds (default 60)")
    add_check_argument(p)


def main(args: argparse.Namespace) -> int:
    files = stdlib_files(args.root)
    if args.limit is not None:
        files = files[: args.limit]
    print(f"stdlib MapReduce: {len(files)} files under {args.root or sysconfig.get_paths()['stdlib']}, "
          f"concurrency {args.concurrency}, executor {args.executor}"
          + (f" ({args.workers} workers)" if args.executor != "local" else ""))
    executor: Any = None
    if args.executor == "process":
        executor = carmulti.ProcessExecutor(workers=args.workers)
    elif args.executor == "ray":
        from . import ray_bench

        executor = carmulti.RayExecutor(address=ray_bench.ray_up(), workers=args.workers)
    try:
        with progress("stdlib", f"MapReduce over {len(files):,} files, executor {args.executor}", 1) as done:
            totals, elapsed = carmulti.run(run_mapreduce(files, max_concurrent=args.concurrency, executor=executor))
            done()
    finally:
        if args.executor == "ray":
            ray_bench.ray_down()
    agents = len(files) + 1
    print(f"agents      {agents}  (mappers {len(files)} + reducer 1)")
    print(f"elapsed     {elapsed:.2f} s")
    print(f"agents/s    {agents / elapsed:,.0f}")
    print(f"peak RSS    {peak_rss_mib():.0f} MiB" + (f" (largest worker {peak_rss_mib(children=True):.0f} MiB)"
                                                       if args.executor == "process" else ""))
    target, met = f"elapsed <= {args.max_seconds:g} s", elapsed <= args.max_seconds
    print(f"target      {target}: {'ok' if met else 'MISSED'}")
    print("totals      " + "  ".join(f"{k}={totals[k]}" for k in TOTAL_KEYS))
    t0 = time.perf_counter()
    expected = direct_totals(files)
    print(f"direct loop {time.perf_counter() - t0:.2f} s: " + "  ".join(f"{k}={expected[k]}" for k in TOTAL_KEYS))
    if totals != expected:
        diff = {k: (totals[k], expected[k]) for k in TOTAL_KEYS if totals[k] != expected[k]}
        print(f"MISMATCH (ours, direct): {diff}")
        return 1
    print("OK")
    if args.check:
        return check_targets([(f"stdlib MapReduce: {elapsed:.2f} s", target, met)])
    return 0
