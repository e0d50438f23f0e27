"""Paced cyclic garbage collection while many agents are in flight.

CPython's automatic collector is driven by allocation counts: every 700 new
container objects it scans the youngest generation, and survivors are scanned
again in the middle generation, then in full collections. An agent in flight
keeps 20-30 container objects alive (its coroutine frames, task, future and
timer, its spec, runtime and mailbox), so a fan-out of a million agents makes
the collector rescan millions of live objects that cannot be garbage. Measured
on this project's 2-core machine (``python -m bench fanout --agents 1000000
--latency 10s --concurrency 1000000``, local executor): 16.5 s of CPU with the
automatic collector against 10.7 s with it paused; a process worker spent
15.5 us per agent started with it and 9.5 us without (``/tmp`` profiling
scripts, see the closing note of issue 13).

:class:`GcPacer` replaces the automatic collector, for as long as it runs, with
full collections (``gc.collect()``) on a timer: checked every
:data:`GC_CHECK_S` seconds, a collection runs when at least
:data:`GC_MIN_ALLOCS` container objects were allocated (net) since the last
one, and when the time since the last one ended is at least
``predicted / GC_MAX_SHARE``, so collecting takes at most about
:data:`GC_MAX_SHARE` of the process's time. A full collection costs time in
proportion to the heap, so the prediction is the last collection's duration
scaled by how the heap grew since (``sys.getallocatedblocks()``, cheap to
read). While the heap grows fast (a million agents starting) collections are
rare; when it stops growing or shrinks they come back. Reference cycles are
still freed, later; objects without cycles are freed by reference counting as
always.

When the pacer stops (a batch ended), what the batch left alive (its results,
outputs, runs) would otherwise be scanned by the next automatic young
collection and again by the middle one before reaching the oldest generation:
measured on a 10,000-agent local fan-out, 14 ms per round (1.4 us an agent,
a fifth of the whole round). The pacer promotes those survivors to the oldest
generation at once instead (``gc.freeze()`` then ``gc.unfreeze()``: two list
splices, no scan), where full collections find them. So that a program running
big batches back to back still gets full collections, the promoted objects are
counted, and once :data:`GC_MIN_ALLOCS` of them have accumulated since the last
full collection, and the share rule above allows one, the stop runs a full
collection instead. A program that froze objects itself (``gc.get_freeze_count()``
non-zero) gets no promotion: the freeze is its own.

Who paces:

* the coordinator, while a batch of at least :data:`GC_RELAX_AT` agents runs
  (:func:`gc_relax` / :func:`gc_restore`, nested batches share one pacer); a
  program that disabled the collector itself (``gc.disable()``) is left alone.
  A pattern's round is paced as a whole (:func:`paced`): building its jobs and
  concluding its runs allocate as much as running them (100,000-agent process
  fan-outs in one coordinator, rounds alternating with and without: the
  automatic collections while the jobs were built and the runs concluded cost
  it about 1 us of CPU an agent, a tenth of its time);
* every ``ProcessExecutor`` worker, for its whole life (the process is ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from typing import Any

__all__ = ["GC_CHECK_S", "GC_MAX_SHARE", "GC_MIN_ALLOCS", "GC_RELAX_AT", "GcPacer", "gc_relax", "gc_restore",
           "paced"]

#: Batches at least this large pace the collector while they run (:func:`gc_relax`).
GC_RELAX_AT = 1000
#: Seconds between two checks of the pacer.
GC_CHECK_S = 0.25
#: Largest share of the process's time the paced collections may take (one in 20).
GC_MAX_SHARE = 0.05
#: Net container allocations since the last collection below which a check collects nothing.
GC_MIN_ALLOCS = 100_000


class GcPacer:
    """Full collections on a timer, at most :data:`GC_MAX_SHARE` of the time, instead of automatic ones.

    Attributes:
        collections: Full collections run so far.
        collecting_s: Seconds spent in them.
    """

    __slots__ = ("_loop", "_handle", "_last_end", "_last_took", "_last_blocks", "_promoted", "_full_seen",
                 "collections", "collecting_s")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last_end = 0.0  # time.monotonic() when the last collection ended
        self._last_took = 0.0  # its duration, seconds
        self._last_blocks = 0  # sys.getallocatedblocks() when it started (0: none yet)
        self._promoted = 0  # objects promoted unscanned (stop) since the last full collection
        self._full_seen = 0  # the interpreter's count of full collections when last looked at
        self.collections = 0
        self.collecting_s = 0.0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Disable the automatic collector and check every :data:`GC_CHECK_S` seconds on ``loop``."""
        if self._handle is not None:
            return
        gc.disable()
        self._loop = loop
        self._handle = loop.call_later(GC_CHECK_S, self._tick)

    def stop(self) -> None:
        """Stop the checks, promote or collect what the batch left alive, enable the automatic collector again."""
        if self._handle is None:
            return
        self._handle.cancel()
        self._handle = None
        self._loop = None
        full = gc.get_stats()[-1]["collections"]
        if full != self._full_seen:  # the automatic collector ran a full collection since the last stop
            self._full_seen, self._promoted = full, 0
        self._promoted += gc.get_count()[0]  # net container allocations since the last collection
        if not (self._promoted >= GC_MIN_ALLOCS and self._collect_if_due()) and gc.get_freeze_count() == 0:
            gc.freeze()  # every tracked object to the permanent generation (a list splice) ...
            gc.unfreeze()  # ... and back into the oldest one: promoted without a scan
        gc.enable()

    def _tick(self) -> None:
        if gc.get_count()[0] >= GC_MIN_ALLOCS:
            self._collect_if_due()
        if self._loop is not None:
            self._handle = self._loop.call_later(GC_CHECK_S, self._tick)

    def _collect_if_due(self) -> bool:
        """A full collection if the time-share rule allows one now; True if it ran."""
        blocks = sys.getallocatedblocks()
        predicted = self._last_took * blocks / self._last_blocks if self._last_blocks else 0.0
        if time.monotonic() - self._last_end < predicted / GC_MAX_SHARE:
            return False
        t0 = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - t0
        self.collections += 1
        self.collecting_s += took
        self._last_took, self._last_blocks, self._last_end = took, blocks, time.monotonic()
        self._promoted, self._full_seen = 0, gc.get_stats()[-1]["collections"]
        return True


_pacer = GcPacer()
_depth = 0


def gc_relax() -> None:
    """Pace the collector (:class:`GcPacer`) while a big batch runs; pair with :func:`gc_restore`.

    Call from a coroutine (the pacer's timer runs on the running loop). Nested
    calls share one pacer; the last :func:`gc_restore` ends it. When the
    collector is already disabled (by the program), nothing changes.
    """
    global _depth
    if _depth == 0 and gc.isenabled():
        _pacer.start(asyncio.get_running_loop())
    _depth += 1


def gc_restore() -> None:
    """Undo one :func:`gc_relax`."""
    global _depth
    _depth -= 1
    if _depth == 0:
        _pacer.stop()


class _Relaxed:
    """:func:`gc_relax` on entry, :func:`gc_restore` on exit (reusable and reentrant: the depth counts)."""

    __slots__ = ()

    def __enter__(self) -> None:
        gc_relax()

    def __exit__(self, *exc: Any) -> None:
        gc_restore()


_RELAXED = _Relaxed()
_AS_IS = contextlib.nullcontext()


def paced(agents: int) -> contextlib.AbstractContextManager[None]:
    """Pace the collector for the ``with`` block when it handles at least :data:`GC_RELAX_AT` agents.

    For a round from start to end (its jobs built, run and concluded) and for an
    executor's batch; nested blocks share one pacer. Enter it from a coroutine.

    Args:
        agents: How many agents the block builds, runs or concludes at once.

    Returns:
        A context manager: :func:`gc_relax` / :func:`gc_restore` around the block,
        or one that changes nothing for fewer agents.
    """
    return _RELAXED if agents >= GC_RELAX_AT else _AS_IS
