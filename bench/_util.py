"""Small helpers shared by scenarios."""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import os


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size of this process (and, with ``children``, of its reaped children), in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        kb += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kb / 1024.0


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
