"""Small helpers shared by scenarios."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
from typing import Any, Iterator


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size in MiB: of this process, or (``children=True``) of the
    largest of its waited-for child processes (Linux ``RUSAGE_CHILDREN`` reports the max, not a sum)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


class RssSampler:
    """Peak resident set size of this process plus all its descendants (worker processes), sampled.

    ``with RssSampler() as s: ...`` records the total at entry (``s.before``, bytes)
    and the highest total seen while the block ran (``s.peak``, bytes), sampling
    every ``interval_s`` seconds on a daemon thread (psutil). A sum of the
    processes' peaks would overstate it: they need not peak at the same moment.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        import threading

        self.interval_s = interval_s
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    @staticmethod
    def total() -> int:
        """Bytes resident now: this process and its descendants (those that vanish mid-read are skipped)."""
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.total())

    def __enter__(self) -> "RssSampler":
        self.before = self.peak = self.total()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.total())


@contextlib.contextmanager
def ipc_endpoint(name: str) -> Iterator[str]:
    """An ``ipc://`` endpoint in a fresh temporary directory; its socket file and the directory go afterwards."""
    tmp = tempfile.mkdtemp(prefix="carmulti-bench-")
    try:
        yield f"ipc://{tmp}/{name}"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(f"{tmp}/{name}")
        os.rmdir(tmp)


#: How long a baseline waits for its child processes' next answer before it gives up (seconds).
BASELINE_WAIT_S = 60.0


def silent(what: str, procs: list[Any], wait_s: float) -> RuntimeError:
    """The error of a baseline whose child processes sent nothing for ``wait_s`` seconds, with their states."""
    states = ", ".join(f"pid {p.pid} " + ("alive" if p.is_alive() else f"exited with {p.exitcode}") for p in procs)
    return RuntimeError(f"{what}: no answer from its child processes for {wait_s:g} s ({states}); "
                        "the baseline cannot be measured")


def reap(proc: Any, timeout_s: float = 10.0) -> None:
    """Wait ``timeout_s`` for a child process to exit, then kill it and wait again."""
    proc.join(timeout=timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
