"""Shared fixtures for the carcore tests."""

from __future__ import annotations

import os

import psutil
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "carcore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("carcore")


def shm_entries(prefix: str = "carmulti") -> set[str]:
    """Names in /dev/shm created by BudgetCounters with ``prefix`` in this process tree.

    Segments named ``{prefix}-{pid}-{hex}`` whose pid is not this process or one
    of its descendants belong to someone else (another test run) and are ignored.
    """
    ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:  # pragma: no cover
        return set()
    out = set()
    for n in names:
        parts = n.split("-")
        if n.startswith(prefix + "-") and len(parts) >= 3 and parts[-2].isdigit() and int(parts[-2]) in ours:
            out.add(n)
    return out


@pytest.fixture
def no_shm_leak():
    """Fail the test if it leaves a /dev/shm/carmulti-* entry behind."""
    before = shm_entries()
    yield
    leaked = shm_entries() - before
    assert not leaked, f"leaked shared-memory segments: {sorted(leaked)}"
