"""The synchronous entry point."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Awaitable, Coroutine, TypeGuard, TypeVar

T = TypeVar("T")

__all__ = ["run"]


def run(coro: Coroutine[Any, Any, T] | Awaitable[T], *, debug: bool = False) -> T:
    """Run ``coro`` to completion on a fresh uvloop event loop and return its result.

    Falls back to the stdlib asyncio loop only where uvloop is not installed
    (e.g. Windows). Usage: ``carmulti.run(main())`` -- the coroutine, not the
    function. Other awaitables (objects with ``__await__``) are awaited too.

    Raises:
        TypeError: ``coro`` is not awaitable: the message says what was passed
            and how to fix it (``carmulti.run(main)`` -> call it: ``carmulti.run(main())``).
        RuntimeError: called from inside a running event loop.
    """
    if not _is_coroutine(coro):
        if not inspect.isawaitable(coro):
            raise TypeError(_not_awaitable(coro))
        coro = _await(coro)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on POSIX
        return asyncio.run(coro, debug=debug)
    return uvloop.run(coro, debug=debug)


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def _is_coroutine(aw: Awaitable[T]) -> TypeGuard[Coroutine[Any, Any, T]]:
    """``inspect.iscoroutine(aw)``, telling the type checker the result type is still ``T``."""
    return inspect.iscoroutine(aw)


def _is_async_callable(obj: Any) -> bool:
    """True when ``obj`` is a coroutine function (also through partials, methods and an ``async def __call__``)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    if isinstance(obj, type):
        return False
    call = getattr(type(obj), "__call__", None)
    return inspect.isfunction(call) and inspect.iscoroutinefunction(call)


def _not_awaitable(obj: Any) -> str:
    """The TypeError text for ``run(obj)`` with a non-awaitable ``obj``: what it got and how to fix it."""
    head = "carmulti.run() takes a coroutine"
    inner = obj
    while isinstance(inner, functools.partial):
        inner = inner.func
    name = getattr(inner, "__name__", None) or type(inner).__name__
    kind = "method" if inspect.ismethod(inner) else "functools.partial of" if inner is not obj else "function"
    if inspect.isasyncgenfunction(obj) or inspect.isasyncgen(obj):
        what = f"async generator function {name!r}" if inspect.isasyncgenfunction(obj) else type(obj).__name__
        return (f"{head}, got {what}: an async generator is iterated, not awaited; consume it with 'async for' "
                "inside an 'async def main()' and call carmulti.run(main())")
    if _is_async_callable(obj):
        return f"{head}, got {kind} {name!r}: call it: carmulti.run({name}())"
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return (f"{head}, got {kind} {name!r}, which is a plain def: define it as 'async def {name}()' "
                f"and call carmulti.run({name}())")
    got = "None" if obj is None else f"{type(obj).__name__} {obj!r:.60}"
    return f"{head}, got {got}: pass the coroutine of an async def function, e.g. carmulti.run(main())"
