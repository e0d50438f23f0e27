"""What the process executor ships to workers once, and for how long: runners and coordinations.

Owns :func:`dumps` (how a runner or a coordination's ``(budget, policies)`` is
pickled for a worker) and :class:`ShippedCache` (which of them each worker has,
reference-counted by the jobs in flight that need them, with at most
``IDLE_CACHE`` idle ones of each kind kept: a long-lived executor serving many
fresh coordinations keeps flat memory and shared-memory mappings).

Pickling:

dill pickles a module by reference only when it looks installed: its file is under the
interpreter's prefix or a ``site-packages`` directory. Under an editable install (``pip install
-e``, the README's set-up) carmulti's and carcore's files are in the source tree, so a runner
whose code names the ``carmulti`` module (``return carmulti.AgentOutput(...)`` in a ``__main__``
runner) made dill copy the module's namespace *by value*, which fails on its ``ContextVar``.
Here carmulti and carcore modules (and their submodules) always travel by reference: the worker
imports its own copy, exactly as it does for installed packages.
"""

from __future__ import annotations

import collections
import functools
import importlib
import io
import sys
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import dill

from .payloads import too_big

if TYPE_CHECKING:
    from ..base import Coordination

__all__ = ["IDLE_CACHE", "Shipped", "ShippedCache", "dumps"]

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


#: Idle runners (and, separately, idle coordinations) an executor keeps shipped to its workers.
IDLE_CACHE = 8


class Shipped:
    """A runner, or one coordination's ``(budget, policies)``, shipped once to each worker that needs it.

    Attributes:
        cid: Its id on the wire (never reused).
        users: Jobs in flight that need it; at zero it is idle.
        ref: For a coordination, a weak reference to it (``None`` for a runner).
    """

    __slots__ = ("cid", "obj", "blob", "users", "budget", "policies", "ref", "dead", "__weakref__")

    def __init__(self, cid: int, obj: Any) -> None:
        self.cid = cid
        self.obj = obj  # the runner (strong: it may not support weak references); None for a coordination
        self.blob: bytes | None = None  # the pickle, made on first shipment
        self.users = 0
        self.budget: Any = None
        self.policies: Any = None
        self.ref: Any = None
        self.dead = False  # a coordination that was collected, or whose budget/policies were replaced

    def coordination(self) -> "Coordination | None":
        """The coordination, while it is alive."""
        return self.ref() if self.ref is not None else None

    def pickle(self, limit: int, *, remote_budget: bool = False) -> bytes:
        """The pickle to ship (made once).

        Args:
            limit: ``max_frame_bytes``.
            remote_budget: Ship the budget's limits only (a worker on another machine
                cannot map its shared memory; it calls the coordinator instead).

        Raises:
            ValueError: it exceeds ``limit`` bytes (``max_frame_bytes``).
            TypeError, pickle.PicklingError: something in it cannot be pickled.
        """
        if self.blob is None:
            budget = self.budget.limits if remote_budget and self.budget is not None else self.budget
            self.blob = dumps(self.obj) if self.obj is not None else dumps((budget, self.policies))
        if len(self.blob) > limit:
            what = "the runner" if self.obj is not None else "the coordination's budget and policies"
            raise ValueError(too_big(f"{what} pickled with dill", len(self.blob), limit))
        return self.blob


class ShippedCache:
    """Runners and coordinations known to the workers, and when workers may forget them.

    A job holds its runner's and its coordination's entry from creation
    (:meth:`acquire`) to resolution (:meth:`release`). :meth:`evict` returns the
    ids every worker should forget: idle entries beyond the most recent
    :data:`IDLE_CACHE` of each kind, and every coordination that was garbage
    collected or whose budget/policies were replaced, once its last job is done.
    """

    def __init__(self) -> None:
        self.runners: dict[int, Shipped] = {}  # id(runner) -> entry
        self.coordinations: "weakref.WeakKeyDictionary[Any, Shipped]" = weakref.WeakKeyDictionary()
        self.by_id: dict[int, Shipped] = {}  # coordination entries by cid (events and state reads name them)
        self._idle_runners: collections.OrderedDict[int, Shipped] = collections.OrderedDict()
        self._idle_coordinations: collections.OrderedDict[int, Shipped] = collections.OrderedDict()
        self._next_cid = 0
        self._collected: collections.deque[Shipped] = collections.deque()  # appended by weakref callbacks

    def runner_entry(self, runner: Any) -> Shipped:
        """The entry of ``runner`` (made on first use)."""
        e = self.runners.get(id(runner))
        if e is None or e.obj is not runner:
            self._next_cid += 1
            e = self.runners[id(runner)] = Shipped(self._next_cid, runner)
        return e

    def coordination_entry(self, coordination: "Coordination") -> Shipped:
        """The entry of ``coordination``'s current budget and policies (made on first use)."""
        e = self.coordinations.get(coordination)
        if e is None or e.budget is not coordination.budget or e.policies is not coordination.policies:
            if e is not None:
                self._retire(e)  # its budget or policies were replaced
            self._next_cid += 1
            e = Shipped(self._next_cid, None)
            e.budget, e.policies = coordination.budget, coordination.policies
            e.ref = weakref.ref(coordination, functools.partial(_collected, weakref.ref(self), e))
            self.coordinations[coordination] = e
            self.by_id[e.cid] = e
        return e

    def acquire(self, runner_entry: Shipped, coordination_entry: Shipped, jobs: int = 1) -> None:
        """``jobs`` jobs (at least one) need these two entries, each until its :meth:`release`."""
        if runner_entry.users == 0:
            self._idle_runners.pop(runner_entry.cid, None)
        runner_entry.users += jobs
        if coordination_entry.users == 0:
            self._idle_coordinations.pop(coordination_entry.cid, None)
        coordination_entry.users += jobs

    def release(self, runner_entry: Shipped, coordination_entry: Shipped) -> None:
        """A job is done with its entries (once per job, on every job's path: no loop)."""
        runner_entry.users -= 1
        if runner_entry.users == 0:
            self._idle_runners[runner_entry.cid] = runner_entry
        coordination_entry.users -= 1
        if coordination_entry.users == 0:
            self._idle_coordinations[coordination_entry.cid] = coordination_entry

    def _retire(self, e: Shipped) -> None:
        e.dead = True
        if e.users == 0 and e.cid in self.by_id:
            self._idle_coordinations[e.cid] = e

    def evict(self) -> tuple[list[int], list[int]]:
        """Forget what no coordination needs; returns ``(runner ids, coordination ids)`` for the workers."""
        while self._collected:
            self._retire(self._collected.popleft())
        runners: list[int] = []
        idle = self._idle_runners
        while len(idle) > IDLE_CACHE:
            _, e = idle.popitem(last=False)
            if self.runners.get(id(e.obj)) is e:
                del self.runners[id(e.obj)]
            runners.append(e.cid)
        coordinations: list[int] = []
        idle = self._idle_coordinations
        for cid in [cid for cid, e in idle.items() if e.dead]:
            del idle[cid]
            coordinations.append(cid)
        while len(idle) > IDLE_CACHE:
            _, e = idle.popitem(last=False)
            coordinations.append(e.cid)
        for cid in coordinations:
            e = self.by_id.pop(cid)
            e.dead = True
            c = e.coordination()
            if c is not None and self.coordinations.get(c) is e:
                del self.coordinations[c]
        return runners, coordinations

    def counts(self) -> dict[str, int]:
        """``{"runners": n, "infras": m}``: entries kept (in use, plus at most IDLE_CACHE idle of each)."""
        return {"runners": len(self.runners), "infras": len(self.by_id)}


def _collected(cache_ref: "Callable[[], ShippedCache | None]", e: Shipped, _ref: Any) -> None:
    """Weakref callback: a coordination was collected (may run in any thread: only a deque append)."""
    cache = cache_ref()
    if cache is not None:
        cache._collected.append(e)
