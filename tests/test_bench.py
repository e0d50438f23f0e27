"""Smoke tests of ``python -m bench`` (small N; no timing assertions)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import SCENARIOS
from bench import mailbox as bmail
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
    (["mailbox", "--n", "200", "--n-process", "50", "--repeat", "1", "--warmup", "0"], "2 uvloop processes"),
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


def test_mailbox_baselines_children_exit_by_themselves() -> None:
    # Each child answers the parent's last number and exits 0 (a child left waiting is killed and refused).
    assert bmail._pipe_baseline(50) > 0
    assert bmail._uvloop_baseline(50) > 0
    with pytest.raises(RuntimeError, match="_pipe_child ended with 1"):  # EOF before its first number
        bmail._with_child(bmail._pipe_child, lambda a, n: 1.0, 50)
    # A child that dies (here: it cannot read the uvloop baseline's frames) fails the run instead of hanging it.
    with pytest.raises(RuntimeError, match="_pipe_child ended with 1") as info:
        bmail._with_child(bmail._pipe_child, bmail._uvloop_parent, 50)
    assert str(info.value.__context__) == bmail._CLOSED


def test_fanout_baselines_fail_when_their_children_go_silent(tmp_path: Path) -> None:
    import multiprocessing

    import zmq
    import zmq.asyncio

    from bench import fanout as bfan
    from bench import minimal_engine as bmin

    # The echo process cannot bind (no such directory) and exits: the raw pyzmq baseline names it.
    with pytest.raises(RuntimeError, match=r"raw pyzmq baseline: no answer .* for 1 s \(pid \d+ exited with 1\)"):
        bfan._raw_zmq_at(f"ipc://{tmp_path}/missing/echo", 10, 8, 1, lambda: None, wait_s=1.0)
    proc = multiprocessing.get_context("spawn").Process(target=int)  # exits at once, status 0
    proc.start()
    proc.join(10)

    async def wait_on_nobody() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.bind(f"ipc://{tmp_path}/engine")
            await bmin._recv(sock, [proc], 0.2)
        finally:
            sock.close(0)
            ctx.term()

    with pytest.raises(RuntimeError, match=r"minimal engine: no answer .* for 0.2 s \(pid \d+ exited with 0\)"):
        asyncio.run(wait_on_nobody())


def _bench(tmp_path: Path, *argv: str) -> tuple[str, dict]:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "bench", *argv, "--json", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, orjson.loads(out.read_bytes())


@pytest.mark.parametrize("executor", ["local", "process"])
def test_resume_bench_small_run_checks_every_replay(tmp_path: Path, executor: str) -> None:
    stdout, data = _bench(tmp_path, "resume", "--items", "1500", "--concurrency", "50", "--reduce-fan-in", "16",
                          "--repeat", "1", "--executor", executor)
    assert "every replay checked: OK" in stdout
    rows = data["rows"]
    assert [r["name"] for r in rows] == ["journaled MapReduce", "replay of the finished journal", "journal size"]
    assert [r["target_ratio"] for r in rows] == [0.87, 5.0, None]
    assert rows[0]["baseline_name"] == "same run without a journal" and rows[1]["baseline_name"] == "the journaled run"
    (rnd,) = data["extra"]["rounds"]
    assert rnd["agents"] == data["extra"]["agents"] == 1500 + 94 + 6 + 1  # fan-in 16: 94, then 6, then the final
    assert rnd["journal_bytes"] > 0 and data["params"]["executor"] == executor


def test_fanout_local_with_langgraph_peer_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "sweep.png"
    stdout, data = _bench(tmp_path, "fanout", "--agents", "300", "--repeat", "1", "--peers", "--plot", str(png),
                          "--sweep", "100,200")
    names = [r["baseline_name"] for r in data["rows"]]
    assert names == ["bare asyncio.gather on uvloop", "LangGraph Send + operator.add"]
    assert all(r["value"] > 0 and r["baseline"] > 0 for r in data["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = data["extra"]["sweep"]
    assert {(r["system"], r["n"]) for r in sweep} == {(s, n) for s in ("carmulti local", "asyncio.gather", "LangGraph Send")
                                                       for n in (100, 200)}
    assert all(r["agents_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in sweep)


def test_fanout_process_against_pool_raw_zmq_and_the_minimal_engine(tmp_path: Path) -> None:
    _, data = _bench(tmp_path, "fanout", "--executor", "process", "--workers", "2", "--agents", "500", "--repeat", "1")
    names = [r["baseline_name"] for r in data["rows"]]
    assert names[0].startswith("ProcessPoolExecutor(2)") and names[1].startswith("raw pyzmq DEALER/ROUTER")
    assert names[2].startswith("minimal engine: 2 workers")
    assert data["rows"][0]["target_ratio"] == 5.0
    assert data["rows"][2]["baseline"] > 0 and data["rows"][2]["target_ratio"] is None


def test_the_minimal_engine_answers_every_agent_and_leaves_no_process() -> None:
    from bench.minimal_engine import minimal_engine

    ticks: list[int] = []
    rates = minimal_engine(3000, 2, 128, 2, lambda: ticks.append(1), inflight_per_worker=512)
    assert len(rates) == 2 and all(r > 0 for r in rates) and len(ticks) == 2


def test_fanout_latency_mode_reports_wall_against_ideal(tmp_path: Path) -> None:
    from bench import fanout

    _, data = _bench(tmp_path, "fanout", "--agents", "200", "--latency", "5ms..20ms", "--concurrency", "50",
                     "--repeat", "1", "--warmup", "0")
    ideal = sum(fanout.agent_latency(i, 0.005, 0.020) for i in range(200)) / 50
    assert data["extra"]["ideal_wall_s"] == pytest.approx(ideal)
    ratio = data["rows"][0]
    assert ratio["unit"] == "x" and ratio["value"] >= 1.0  # no schedule beats the ideal
    rss, per_agent = data["rows"][1], data["rows"][2]
    assert rss["unit"] == "MiB" and rss["value"] * 2**20 == pytest.approx(data["extra"]["rss_peak_bytes"][0])
    assert per_agent["unit"] == "B" and "(50 at once)" in per_agent["name"]
    before, peak = data["extra"]["rss_before_bytes"][0], data["extra"]["rss_peak_bytes"][0]
    assert 0 < before <= peak and per_agent["value"] == pytest.approx((peak - before) / 50)


def test_parse_latency_forms_and_errors() -> None:
    import argparse

    from bench.fanout import agent_latency, parse_latency

    assert parse_latency("0") == (0.0, 0.0)
    assert parse_latency("50ms..500ms") == (0.05, 0.5)
    assert parse_latency("0.2s") == (0.2, 0.2)
    for bad in ("fast", "500ms..50ms", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--latency"):
            parse_latency(bad)
    lats = [agent_latency(i, 0.05, 0.5) for i in range(1000)]
    assert min(lats) >= 0.05 and max(lats) <= 0.5 and abs(sum(lats) / 1000 - 0.275) < 0.01


REST_MARKUP = re.compile(r"``|:[a-z]+:`|`[^`\n]+`_")


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_help_shows_no_rest_markup(scenario: str | None) -> None:
    argv = ["--help"] if scenario is None else [scenario, "--help"]
    proc = subprocess.run([sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert not REST_MARKUP.search(proc.stdout), proc.stdout
    if scenario == "core":
        assert "StateStore set/get vs a plain dict;" in proc.stdout  # the words stay, the markup goes
    if scenario is None:
        assert "MapReduce at scale: --items 1000000 --reduce-fan-in 64 with" in " ".join(proc.stdout.split())


def test_plain_help_text_strips_rest_roles_and_literals() -> None:
    from bench.__main__ import plain_text

    assert plain_text("Uses :class:`carmulti.runners.LlamaCppRunner` and :mod:`~carmulti.runners._textcalls`.") == \
        "Uses carmulti.runners.LlamaCppRunner and _textcalls."
    assert plain_text("``fsync=\"batch\"`` vs :func:`the loop <asyncio.gather>`, see `docs`_::") == \
        'fsync="batch" vs the loop, see docs:'
    assert plain_text("50% of ``N``") == "50% of N"


def _mapreduce_check(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "mapreduce", "--items", "500", "--reduce-fan-in", "16",
                           "--concurrency", "20", "--check", *extra], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_check_passes_when_every_target_is_met() -> None:
    proc = _mapreduce_check()  # a 500-item run stays far below the 4096 MiB peak-RSS target
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check: all 1 target met" in proc.stdout


def test_check_exits_1_and_names_the_missed_target() -> None:
    proc = _mapreduce_check("--max-rss-mib", "1")  # no Python process fits in 1 MiB
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "check: 1 of 1 target missed" in proc.stdout
    missed = [ln for ln in proc.stdout.splitlines() if ln.startswith("  MISSED ")]
    assert len(missed) == 1 and "peak RSS" in missed[0] and "<= 1 MiB" in missed[0], proc.stdout


def test_without_check_a_missed_target_is_reported_but_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "fanout", "--agents", "100", "--latency", "1ms..2ms",
                           "--concurrency", "10", "--repeat", "1", "--warmup", "0", "--max-wall-ratio", "0.99",
                           "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = [r for r in orjson.loads(out.read_bytes())["rows"] if r["unit"] == "x"]
    # no schedule beats the ideal wall time, so a target below 1.0x is always missed
    assert row["targets"] == [{"of": "value", "op": "<=", "threshold": 0.99, "met": False}]
    assert "MISSED" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bench", "fanout", "--agents", "100", "--latency", "1ms..2ms",
                           "--concurrency", "10", "--repeat", "1", "--warmup", "0", "--max-wall-ratio", "0.99", "--check"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and "MISSED" in proc.stdout and "wall / ideal" in proc.stdout, proc.stdout + proc.stderr


def test_every_printed_target_is_decidable() -> None:
    from bench._report import Row

    rows = [Row("r", 10.0, "ops/s", 20.0, "base", target=0.5), Row("v", 10.0, "ops/s", min_value=20.0),
            Row("m", 3.0, "MiB", max_value=4.0), Row("nobase", 1.0, "ops/s", target=0.5)]
    assert [[met for _, met in r.checks()] for r in rows] == [[True], [False], [True], [False]]
    assert rows[3].checks()[0][0] == "ratio >= 0.5x (no baseline figure)"


def test_stdlib_check_reports_its_time_target() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--limit", "10", "--check"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(ln.startswith("target      elapsed <= 60 s: ok") for ln in proc.stdout.splitlines()), proc.stdout
    assert "check: all 1 target met" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bench", "--limit", "10", "--check", "--max-seconds", "0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and "MISSED" in proc.stdout, proc.stdout + proc.stderr


def test_no_progress_output_when_stderr_is_not_a_terminal() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "rounds", "--n", "10", "--repeat", "2", "--warmup", "0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""


def test_progress_on_a_terminal_names_the_scenario_and_the_repeat(run_on_pty: Any) -> None:
    rc, shown, table = run_on_pty([sys.executable, "-m", "bench", "rounds", "--n", "10", "--repeat", "2", "--warmup", "0"],
                                  cwd=ROOT)
    assert rc == 0, table
    assert "bench rounds: Pipeline of 4" in shown and "repeat 1/2" in shown, shown
    assert "Supervisor 4 workers x 3 rounds" in table and "bench rounds:" not in table  # the display is on stderr only
