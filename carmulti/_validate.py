"""Argument checks shared by the whole package (placeholder until the validation module lands)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["int_at_least", "seconds"]


def seconds(value: Any, what: str) -> float:
    """``value`` as a float number of seconds > 0 (never a bool, NaN or inf).

    Raises:
        ValueError: naming ``what`` and the value.
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def int_at_least(value: Any, minimum: int, what: str) -> int:
    """``value`` as an int >= ``minimum`` (never a bool).

    Raises:
        ValueError: naming ``what`` and the value.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)
