"""Smoke tests of the ``--peers`` baselines (bench/peers.py) and ``--plot`` (bench/plot.py).

Small N, no timing assertions. Ray runs only in a child interpreter (``measure_point``)
that starts and stops it, so this process never holds Ray's dozen processes and threads;
the test then checks that none of them outlived the child.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from bench import peers
from bench import plot as bplot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _needs(mod: str) -> None:
    """README's test command installs the bench-peers extra; without it these fail, naming it."""
    why = peers.available()[{"langgraph": "LangGraph Send", "ray": "Ray tasks"}[mod]]
    if why is not None:
        pytest.fail(why, pytrace=False)


def test_available_names_both_peers() -> None:
    av = peers.available()
    assert set(av) == {"LangGraph Send", "Ray tasks"}
    for why in av.values():
        assert why is None or "bench-peers" in why


@pytest.mark.parametrize(("system", "blocked", "call"), [
    ("LangGraph Send", ("langgraph", "langgraph.graph", "langgraph.types"), lambda: peers.langgraph_send_fanout_sync(5)),
    ("Ray tasks", ("ray",), lambda: peers.ray_tasks_fanout(5)),
])
def test_missing_library_raises_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch, system, blocked, call) -> None:
    for var in ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # restored afterwards
        monkeypatch.setenv(var, "0")
    for mod in blocked:
        monkeypatch.setitem(sys.modules, mod, None)  # "import mod" now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'carmulti\[bench-peers\]'"):
        call()
    assert "bench-peers" in (peers.available()[system] or "")


async def test_langgraph_send_fanout_small_n() -> None:
    _needs("langgraph")
    rate = await peers.langgraph_send_fanout(50)
    assert rate > 0
    assert await peers.langgraph_send_fanout(1) > 0  # the compiled graph is reused with another N


def test_measure_point_langgraph_in_a_fresh_process() -> None:
    _needs("langgraph")
    row = bplot.measure_point("LangGraph Send", 50, timeout=120)
    assert row["system"] == "LangGraph Send" and row["n"] == 50
    assert row["agents_per_s"] > 0 and row["peak_rss_mib"] > 10


def _ray_processes(tag: str) -> list[str]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if tag in cmd:
            out.append(f"{p.info['pid']}: {cmd[:120]}")
    return out


@pytest.mark.timeout(180)
def test_ray_tasks_fanout_in_a_child_that_starts_and_stops_ray(tmp_path: Path) -> None:
    _needs("ray")
    # A unique temp dir (short: Ray's unix sockets live under it) that every Ray process names
    # on its command line, so we can tell whether any of them survived the child.
    temp_dir = f"/tmp/cmray-{tmp_path.name[-12:]}-{time.monotonic_ns() % 10**6}"
    try:
        row = bplot.measure_point("Ray tasks", 50, timeout=150, env={"CARMULTI_RAY_TEMP_DIR": temp_dir})
        assert row["system"] == "Ray tasks" and row["n"] == 50
        assert row["agents_per_s"] > 0
        setup = row["extra"]["ray_setup_s"]
        assert setup["init"] > 0 and setup["workers"] > 0
        assert row["rss_tree_peak_mib"] > row["rss_self_mib"]  # Ray's own processes are counted
        deadline = time.monotonic() + 15
        while _ray_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _ray_processes(temp_dir), "Ray processes outlived their driver"
    finally:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_measure_point_unknown_system_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        bplot.measure_point("no such system", 10)


def test_register_system_runs_in_the_child() -> None:
    _needs("langgraph")
    bplot.register_system("test peer", "bench.peers:langgraph_send_fanout", is_async=True, warmup_n=0)
    try:
        row = bplot.measure_point("test peer", 3, timeout=120)
    finally:
        del bplot.SYSTEMS["test peer"]
    assert row["system"] == "test peer" and row["n"] == 3 and row["agents_per_s"] > 0


def test_plot_sweep_writes_a_png(tmp_path: Path) -> None:
    rows = []
    for system, rate, mib in [("carmulti local", 3e5, 60), ("asyncio.gather", 5e5, 50), ("carmulti process", 1e5, 150),
                              ("ProcessPoolExecutor", 1e4, 90), ("LangGraph Send", 1e3, 120), ("Ray tasks", 1.2e3, 850),
                              ("someone else", 2e3, 70)]:
        for n in (100, 1000, 10000):
            rows.append({"system": system, "n": n, "agents_per_s": rate, "peak_rss_mib": mib + n / 100})
            rows.append({"system": system, "n": n, "agents_per_s": rate * 1.1, "peak_rss_mib": None})  # a repeat
    out = tmp_path / "sub" / "sweep.png"
    bplot.plot_sweep(rows, str(out))
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_sweep_rejects_no_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        bplot.plot_sweep([], str(tmp_path / "x.png"))
