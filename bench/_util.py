"""Small helpers shared by scenarios."""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import os


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
