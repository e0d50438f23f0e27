"""Structured-concurrency helpers shared by the engine's fan-outs (no engine imports)."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended; their outcomes are dropped.

    For the ``except BaseException`` of a fan-out that must leave nothing running
    behind it when one task fails or the caller is cancelled (as a trio nursery
    does): call it, then re-raise. Tasks already done are left as they are.
    """
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
