"""Shared fixtures for the carcore tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "carcore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("carcore")


def shm_entries(prefix: str = "carmulti") -> set[str]:
    """Names in /dev/shm created by BudgetCounters with ``prefix`` in this process tree."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(prefix + "-")}
    except FileNotFoundError:  # pragma: no cover
        return set()


@pytest.fixture
def no_shm_leak():
    """Fail the test if it leaves a /dev/shm/carmulti-* entry behind."""
    before = shm_entries()
    yield
    leaked = shm_entries() - before
    assert not leaked, f"leaked shared-memory segments: {sorted(leaked)}"
