"""How runners and coordination objects are pickled for worker processes (dill)."""

from __future__ import annotations

from typing import Any

__all__ = ["dumps"]


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with dill; classes defined in ``__main__`` carry their globals."""
    import dill

    return dill.dumps(obj, recurse=True)
