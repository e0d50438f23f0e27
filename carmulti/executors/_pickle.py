"""How runners and coordination objects are pickled for worker processes (dill).

dill pickles a module by reference only when it looks installed: its file is under the
interpreter's prefix or a ``site-packages`` directory. Under an editable install (``pip install
-e``, the README's set-up) carmulti's and carcore's files are in the source tree, so a runner
whose code names the ``carmulti`` module (``return carmulti.AgentOutput(...)`` in a ``__main__``
runner) made dill copy the module's namespace *by value*, which fails on its ``ContextVar``.
Here carmulti and carcore modules (and their submodules) always travel by reference: the worker
imports its own copy, exactly as it does for installed packages.
"""

from __future__ import annotations

import importlib
import io
import sys
from types import ModuleType
from typing import Any

import dill

__all__ = ["dumps"]

#: Top-level packages whose modules are always pickled by reference (the worker imports them).
BY_REFERENCE = frozenset({"carmulti", "carcore"})


class _Pickler(dill.Pickler):  # type: ignore[misc]
    """dill's pickler, except that carmulti/carcore modules are saved as an import by name."""

    def reducer_override(self, obj: Any) -> Any:
        # Called by pickle before dill's own dispatch (save_module) for every object.
        if isinstance(obj, ModuleType):
            name = obj.__name__
            if name.partition(".")[0] in BY_REFERENCE and sys.modules.get(name) is obj:
                return importlib.import_module, (name,)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with dill for a worker process, carmulti/carcore modules by reference.

    Classes and functions defined in ``__main__`` carry the globals they name (dill's
    ``recurse=True``), not the whole ``__main__`` namespace.

    Args:
        obj: What to ship (a runner, or an infra's ``(budget, policies)``).

    Returns:
        The pickle, to be read with ``dill.loads`` in the worker.

    Raises:
        TypeError, pickle.PicklingError: something ``obj`` holds cannot be pickled (a lock, a
            socket, an open file, ...); the message names the offending type.
    """
    buf = io.BytesIO()
    _Pickler(buf, dill.settings["protocol"], recurse=True).dump(obj)
    return buf.getvalue()
