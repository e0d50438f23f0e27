"""Fixtures for the carmulti tests.

``make_infra`` is the one way pattern tests build a :class:`carmulti.SharedInfra`:
it is parametrized by executor (``"local"`` for now; a ``"process"`` param is
added later), so every pattern test runs on every executor. Tests that observe
runner-side state (call counters, max-concurrency trackers) cannot run on a
process executor and use the local-only ``infra`` fixture (or a plain
``SharedInfra()``) instead.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

from carmulti import LocalExecutor, ProcessExecutor, RayExecutor, SharedInfra

settings.register_profile(
    "carmulti",
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

EXECUTOR_PARAMS = ["local", "process", "ray"]


def _make_executor(kind: str, cluster: Any = None) -> Any:
    if kind == "local":
        return LocalExecutor()
    if kind == "process":
        return ProcessExecutor(workers=2)
    if kind == "ray":
        return RayExecutor(address=cluster.address)
    raise ValueError(f"unknown executor kind {kind!r}")


class InfraFactory:
    """Callable ``make_infra(**kwargs) -> SharedInfra(executor=<param>, **kwargs)``.

    Attributes:
        kind: The executor param (``"local"``, later ``"process"``).
        made: Every infra built, closed at teardown.
    """

    def __init__(self, kind: str, cluster: Any = None) -> None:
        self.kind = kind
        self.cluster = cluster
        self.made: list[SharedInfra] = []

    def __call__(self, **kwargs: Any) -> SharedInfra:
        infra = SharedInfra(executor=_make_executor(self.kind, self.cluster), **kwargs)
        self.made.append(infra)
        return infra

    async def aclose(self) -> None:
        for infra in self.made:
            await infra.aclose()


@pytest_asyncio.fixture(params=EXECUTOR_PARAMS, ids=EXECUTOR_PARAMS)
async def make_infra(request: pytest.FixtureRequest):
    cluster = request.getfixturevalue("ray_cluster") if request.param == "ray" else None
    factory = InfraFactory(request.param, cluster)
    try:
        yield factory
    finally:
        await factory.aclose()


@pytest_asyncio.fixture
async def infra():
    """A plain in-process ``SharedInfra()`` (local only), closed at teardown."""
    inf = SharedInfra()
    try:
        yield inf
    finally:
        await inf.aclose()
