"""The synchronous entry point."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

__all__ = ["run"]


def run(coro: Coroutine[Any, Any, T], *, debug: bool = False) -> T:
    """Run ``coro`` to completion on a fresh uvloop event loop and return its result.

    Falls back to the stdlib asyncio loop only where uvloop is not installed
    (e.g. Windows).

    Raises:
        RuntimeError: called from inside a running event loop.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on POSIX
        return asyncio.run(coro, debug=debug)
    return uvloop.run(coro, debug=debug)
