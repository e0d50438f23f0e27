"""Smoke tests of ``python -m bench`` (small N; no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench import stdlib as bstd

ROOT = Path(__file__).resolve().parent.parent


def test_bench_help_lists_the_scenarios() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "stdlib" in proc.stdout


def test_stdlib_bench_small_run_prints_ok() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "stdlib", "--limit", "40", "--concurrency", "8"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "OK"
    assert any(ln.startswith("agents      41") for ln in lines)
    assert any(ln.startswith("agents/s") for ln in lines)


def test_stdlib_files_are_real_stdlib_sources() -> None:
    files = bstd.stdlib_files()
    assert len(files) > 500
    assert all(f.endswith(".py") and "site-packages" not in f for f in files)
    assert any(f.endswith("/asyncio/tasks.py") for f in files)


def test_source_stats_counts_functions_classes_lines() -> None:
    src = "class A:\n    def f(self):\n        pass\n\nasync def g():\n    def h():\n        pass\n"
    assert bstd.source_stats(src) == {"functions": 3, "classes": 1, "lines": 7}


def test_source_stats_rejects_bad_syntax_with_a_tool_error() -> None:
    with pytest.raises(bstd.ToolError, match="stats: SyntaxError"):
        bstd.source_stats("def (:\n")


async def test_mapreduce_totals_match_the_direct_loop(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text("def f():\n    pass\n" * (i + 1) + "class C:\n    pass\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    files = bstd.stdlib_files(str(tmp_path))
    totals, elapsed = await bstd.run_mapreduce(files, max_concurrent=3)
    assert elapsed > 0
    assert totals == bstd.direct_totals(files)
    assert totals["failed"] == 1 and totals["parsed"] == 5 and totals["functions"] == 15 and totals["classes"] == 5
    assert orjson.dumps(totals)  # JSON-ready
