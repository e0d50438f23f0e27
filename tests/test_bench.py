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


@pytest.mark.parametrize("argv,expect", [
    (["core", "--n", "2000", "--budget-ops", "2000", "--repeat", "1", "--warmup", "0"], "budget reserve, 2 processes"),
    (["mapreduce", "--items", "3000", "--reduce-fan-in", "16", "--concurrency", "50"], "total checked: OK"),
    (["rounds", "--n", "20", "--repeat", "1", "--warmup", "0"], "Supervisor 4 workers x 3 rounds"),
    (["mailbox", "--n", "200", "--repeat", "1", "--warmup", "0"], "ping-pong in-process"),
])
def test_scenarios_run_at_small_n_and_write_json(tmp_path: Path, argv: list[str], expect: str) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "bench", *argv, "--json", str(out)], capture_output=True, text=True,
                          timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expect in proc.stdout
    data = orjson.loads(out.read_bytes())
    assert data["scenario"] == argv[0]
    assert data["machine"]["cpus"] >= 1
    assert data["rows"] and all(r["value"] > 0 for r in data["rows"])
    for r in data["rows"]:
        if r["baseline"] is not None:
            assert r["ratio"] == pytest.approx(r["value"] / r["baseline"])
