"""Suite-wide fixtures: uvloop for every async test, and a leak check after every test.

The leak check (reliability.md "fixture L") fails a test that leaves behind a
child process (or zombie), a ``/dev/shm/carmulti-*`` segment, a non-daemon
thread, or a pending asyncio task.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psutil
import pytest
import pytest_asyncio
import uvloop

SHM_DIR = "/dev/shm"


def _shm_entries() -> set[str]:
    """Our ``carmulti-{pid}-{hex}`` segments: created by this process or one of its descendants.

    Segments of unrelated processes (another test run, a benchmark) are ignored.
    """
    ours = {os.getpid()} | _children()
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:  # pragma: no cover - non-Linux
        return set()
    out = set()
    for n in names:
        parts = n.split("-")
        if len(parts) >= 3 and parts[0] == "carmulti" and parts[1].isdigit() and int(parts[1]) in ours:
            out.add(n)
    return out


#: Pids of the session Ray cluster's own processes (GCS, raylets, ...): they and every process
#: they start (Ray's worker pool) live for the session, not for a test; RayExecutor's own
#: actors are checked by its tests (no actor alive after aclose).
RAY_ROOTS: set[int] = set()


def _children() -> set[int]:
    """Descendant pids, except multiprocessing's resource tracker (one per interpreter, started
    on first use and kept until exit by design: it unlinks named semaphores if we crash) and the
    session Ray cluster's process tree: neither is a per-test leak."""
    out = set()
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:  # pragma: no cover
        return out
    parent = {}
    for p in kids:
        try:
            parent[p.pid] = p.ppid()
        except psutil.Error:
            continue
    for p in kids:
        try:
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.Error:
            continue
        pid, under_ray = p.pid, False
        while pid in parent:
            if pid in RAY_ROOTS:
                under_ray = True
                break
            pid = parent[pid]
        if not under_ray:
            out.add(p.pid)
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray cluster for the session: a head and two worker nodes (``num_cpus=1`` each; custom
    resources ``node0``..``node2`` name them), failure detection within a few seconds.

    ``ray.shutdown()`` runs before ``cluster.shutdown()``; a bare ``ray.init()`` is never used.
    """
    import ray
    from ray.cluster_utils import Cluster

    before = {p.pid for p in psutil.Process().children()}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node0": 1},
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 4},
    })
    try:
        for i in (1, 2):
            cluster.add_node(num_cpus=1, resources={f"node{i}": 1})
        cluster.wait_for_nodes()
        RAY_ROOTS.update(p.pid for p in psutil.Process().children() if p.pid not in before)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        RAY_ROOTS.update(p.pid for p in psutil.Process().children() if p.pid not in before)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        RAY_ROOTS.clear()


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if not t.daemon and t.ident is not None}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item):
    """Every async test runs on uvloop, the loop carmulti ships with."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest):
    """Fail the test if it leaked a process, shared-memory segment or thread."""
    shm0, kids0, threads0 = _shm_entries(), _children(), _threads()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        new_kids = _children() - kids0
        new_shm = _shm_entries() - shm0
        new_threads = _threads() - threads0
        if not (new_kids or new_shm or new_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if new_kids:
        descr = []
        for pid in sorted(new_kids):
            try:
                p = psutil.Process(pid)
                descr.append(f"{pid} ({p.status()}: {' '.join(p.cmdline()[:4])})")
            except psutil.Error:
                descr.append(str(pid))
        problems.append(f"child processes left running: {', '.join(descr)}")
    if new_shm:
        problems.append(f"shared-memory segments left in {SHM_DIR}: {sorted(new_shm)}")
        for n in new_shm:  # clean up so one leak does not fail every later test
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except OSError:
                pass
    if new_threads:
        problems.append(f"non-daemon threads left running: {sorted(new_threads)}")
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked resources: " + "; ".join(problems), pytrace=False)


@pytest_asyncio.fixture(autouse=True)
async def task_leak_check():
    """Fail an async test that leaves asyncio tasks pending on its loop."""
    yield
    current = asyncio.current_task()
    for _ in range(20):  # let tasks that are finishing finish
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending:
            return
        await asyncio.sleep(0.01)
    names = ", ".join(sorted(t.get_name() for t in pending))
    for t in pending:
        t.cancel()
    pytest.fail(f"asyncio tasks left pending: {names}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """llama-cpp-python opens two ``/dev/null`` files at import and never closes them, which
    prints a ResourceWarning at interpreter exit; close them once the tests are done."""
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        f = getattr(utils, name, None)
        if f is not None and not f.closed:
            f.close()


@pytest.fixture
def run_on_pty(tmp_path):
    """Run a command with stderr on a pseudo-terminal, so rich shows its live display.

    ``run_on_pty(argv, cwd=..., columns=150)`` returns ``(returncode, what the terminal showed
    without ANSI escapes, stdout)``; stdout goes to a file under ``tmp_path``.
    """
    import pty
    import re
    import select
    import subprocess

    def run(argv: list[str], *, cwd: object, columns: int = 150) -> tuple[int, str, str]:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "CI")}
        env.update(TERM="xterm-256color", COLUMNS=str(columns))
        with open(tmp_path / "pty-stdout", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=slave, cwd=cwd, env=env)
        os.close(slave)
        chunks: list[bytes] = []
        try:
            while True:
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif proc.poll() is not None:
                    break
        finally:
            os.close(master)
            rc = proc.wait(timeout=120)
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
        return rc, shown, (tmp_path / "pty-stdout").read_text()

    return run
