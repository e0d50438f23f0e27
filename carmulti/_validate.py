"""Argument checks shared by every constructor of the package.

One rule everywhere: a ``bool`` is never an int, a number or a number of
seconds (``True`` is an ``int`` subclass in Python, never what the caller
meant), and NaN or infinity is never a number. Each check raises
:class:`ValueError` whose text names the argument and its owner (``what``),
the value expected and the value given::

    MapReduce max_concurrent must be an int >= 1, got 0
    agent_timeout_s must be a finite number of seconds > 0 or None, got nan

A check returns the value unchanged (an int given for seconds stays an int),
typed for the caller.
"""

from __future__ import annotations

import math
from typing import Literal, NoReturn, TypeGuard, overload

__all__ = ["int_at_least", "number_at_least", "seconds"]


def _refuse(what: str, expected: str, value: object, allow_none: bool) -> NoReturn:
    raise ValueError(f"{what} must be {expected}{' or None' if allow_none else ''}, got {value!r}")


def _is_number(value: object) -> TypeGuard[int | float]:
    """An int or float that is not a bool, and not NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


@overload
def int_at_least(value: object, minimum: int, what: str, *, allow_none: Literal[False] = False) -> int: ...
@overload
def int_at_least(value: object, minimum: int, what: str, *, allow_none: bool) -> int | None: ...


def int_at_least(value: object, minimum: int, what: str, *, allow_none: bool = False) -> int | None:
    """``value`` when it is an int (not a bool) ``>= minimum``, or ``None`` when allowed.

    Args:
        value: The argument to check.
        minimum: Smallest value accepted.
        what: The argument and its owner, e.g. ``"Mailbox buffer_size"``.
        allow_none: Accept ``None`` (and return it).

    Raises:
        ValueError: ``{what} must be an int >= {minimum}[ or None], got {value!r}``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _refuse(what, f"an int >= {minimum}", value, allow_none)
    return value


@overload
def number_at_least(value: object, minimum: float, what: str, *, unit: str = "",
                    allow_none: Literal[False] = False) -> float: ...
@overload
def number_at_least(value: object, minimum: float, what: str, *, unit: str = "",
                    allow_none: bool) -> float | None: ...


def number_at_least(value: object, minimum: float, what: str, *, unit: str = "",
                    allow_none: bool = False) -> float | None:
    """``value`` when it is a finite int or float (not a bool) ``>= minimum``, or ``None`` when allowed.

    Args:
        value: The argument to check.
        minimum: Smallest value accepted.
        what: The argument and its owner, e.g. ``"BudgetLimits.max_cost_usd"``.
        unit: Named in the message after the bound, e.g. ``"dollars"``.
        allow_none: Accept ``None`` (and return it).

    Raises:
        ValueError: ``{what} must be a finite number >= {minimum}[ ({unit})][ or None], got {value!r}``.
    """
    if value is None and allow_none:
        return None
    if not _is_number(value) or value < minimum:
        _refuse(what, f"a finite number >= {minimum}{f' ({unit})' if unit else ''}", value, allow_none)
    return value


@overload
def seconds(value: object, what: str, *, allow_none: Literal[False] = False) -> float: ...
@overload
def seconds(value: object, what: str, *, allow_none: bool) -> float | None: ...


def seconds(value: object, what: str, *, allow_none: bool = False) -> float | None:
    """``value`` when it is a finite number of seconds ``> 0`` (not a bool), or ``None`` when allowed.

    Args:
        value: The argument to check.
        what: The argument and its owner, e.g. ``"ProcessExecutor cancel_grace_s"``.
        allow_none: Accept ``None`` (and return it), typically "no limit".

    Raises:
        ValueError: ``{what} must be a finite number of seconds > 0[ or None], got {value!r}``.
    """
    if value is None and allow_none:
        return None
    if not _is_number(value) or not value > 0:
        _refuse(what, "a finite number of seconds > 0", value, allow_none)
    return value
