"""Live progress of a coordination's agents (``progress=True`` on ``Swarm.run``, ``MapReduce.run``,
``MapReduce.stream``, ``Fleet.run``).

Counting: :mod:`carmulti.lifecycle` reports every agent of a coordination whose run comes back
from the executor (:func:`finished`: done, or failed; its tokens and cost), every agent the run
ceiling or the budget refuses (:func:`refused`: skipped) and every agent that failed before it
could start (:func:`failed`: a workspace that could not be provisioned). A parallel batch is
dispatched in slices while it is tracked (:func:`run_batch`), so the counts move as agents
finish, not when the whole batch does. Patterns only pass ``progress`` to :func:`display`.

Display: a one-line ``rich`` live display on stderr, redrawn four times a second by rich's
refresh thread: the pattern, a bar, finished/planned agents, done / failed / skipped, tokens,
cost, agents per second, the ETA and the elapsed time. Its last state stays on the terminal
when the run ends. Only when stderr is an interactive terminal (a TTY that is not ``TERM=dumb``;
rich's ``TTY_INTERACTIVE=0`` also turns it off); otherwise nothing is written and nothing is
counted.

Cost: with ``progress=False`` (the default), or no terminal, nothing is registered and the
lifecycle's checks are one test of an empty dict per agent; rich is imported only when a
display starts. While a display runs, every agent through the same :class:`~carmulti.SharedInfra`
counts (a nested pattern, a synthesizer, a reducer, another pattern run concurrently on it), and
a pattern started with ``progress=True`` inside it adds to that display instead of opening a
second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, ContextManager, Iterator, Sequence, TextIO, TypeVar

from ._aio import cancel_and_wait
from .executors.base import AgentJob, AgentRun
from .executors.gcpace import paced
from .types import AgentOutput

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["ProgressCounts", "display", "failed", "finished", "follow", "refused", "run_batch"]

T = TypeVar("T")

#: Infra -> the counts of the display running for it. Empty unless a display runs (the
#: lifecycle tests it before anything else).
TRACKED: dict[Any, "ProgressCounts"] = {}

#: A tracked batch is dispatched in at most this many slices (per-agent below this size).
SLICES = 100

#: Redraws per second.
REFRESH_PER_SECOND = 4


class ProgressCounts:
    """What a display shows: the agents of one coordination that finished, were refused or failed.

    Attributes:
        label: The pattern (``"Swarm"``, ``"MapReduce"``, ``"Fleet"``).
        planned: Agents the pattern expects to run, or ``None`` when unknown (a stream);
            the bar's total is ``max(planned, finished)`` (a synthesizer or a tree of
            reducers adds to it).
        done: Agents that succeeded.
        failed: Agents that failed (error, timeout, lost worker, or never started).
        skipped: Agents the run ceiling or the budget refused.
        input_tokens, output_tokens, cost_usd: What the finished agents reported.
        started: ``time.monotonic()`` when the display started.
    """

    __slots__ = ("label", "planned", "done", "failed", "skipped", "input_tokens", "output_tokens", "cost_usd",
                 "started", "ended")

    def __init__(self, label: str, planned: int | None) -> None:
        self.label = label
        self.planned = planned
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.started = time.monotonic()
        self.ended: float | None = None

    @property
    def finished(self) -> int:
        """Agents accounted for: ``done + failed + skipped``."""
        return self.done + self.failed + self.skipped

    def add_run(self, run: AgentRun) -> None:
        """Count one run back from the executor (as :func:`carmulti.lifecycle.conclude` will judge it)."""
        out = run.output
        if run.error is None and out is not None:
            self.done += 1
        else:
            self.failed += 1
        if out is not None:
            self.add_spend(out)

    def add_spend(self, out: AgentOutput) -> None:
        tok = out.tokens
        if tok is not None:
            self.input_tokens += tok.input_tokens
            self.output_tokens += tok.output_tokens
            self.cost_usd += tok.cost_usd

    def summary(self) -> str:
        """The display's text after the bar, e.g. ``"3/4 agents · done 2 · failed 1 · skipped 0 · ..."``."""
        n = self.finished
        total = None if self.planned is None else max(self.planned, n)
        elapsed = (self.ended if self.ended is not None else time.monotonic()) - self.started
        rate = (self.done + self.failed) / elapsed if elapsed > 0 else 0.0  # skips take no time
        parts = [f"{n}/{total} agents" if total is not None else f"{n} agents",
                 f"done {self.done}", f"failed {self.failed}", f"skipped {self.skipped}",
                 f"{self.input_tokens + self.output_tokens:,} tokens", f"${self.cost_usd:,.4f}",
                 f"{rate:,.1f} agents/s"]
        if self.ended is None and total is not None:
            left = total - n
            parts.append("ETA " + (_clock(left / rate) if rate > 0 and left > 0 else "-"))
        parts.append(_clock(elapsed))
        return " · ".join(parts)

    def __rich__(self) -> "RenderableType":
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        n = self.finished
        total = None if self.planned is None else max(self.planned, n)
        grid = Table.grid(padding=(0, 1))
        grid.add_row(Text(self.label, style="bold"),
                     ProgressBar(total=total, completed=n, width=24, pulse=total is None and self.ended is None),
                     Text(self.summary(), no_wrap=False))
        return grid


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# -- the lifecycle's hooks --------------------------------------------------------------------------------------
def finished(infra: Any, run: AgentRun) -> None:
    """An agent's run came back from the executor (called by the lifecycle only while ``TRACKED``)."""
    counts = TRACKED.get(infra)
    if counts is not None:
        counts.add_run(run)


def refused(infra: Any) -> None:
    """The run ceiling or the budget refused an agent."""
    counts = TRACKED.get(infra) if TRACKED else None
    if counts is not None:
        counts.skipped += 1


def failed(infra: Any) -> None:
    """An agent failed before it could start (its workspace could not be provisioned)."""
    counts = TRACKED.get(infra) if TRACKED else None
    if counts is not None:
        counts.failed += 1


async def run_batch(counts: ProgressCounts, run: Callable[[Sequence[AgentJob]], Awaitable[list[AgentRun]]],
                    jobs: Sequence[AgentJob]) -> list[AgentRun]:
    """``run(jobs)`` in at most :data:`SLICES` concurrent slices, counting each slice as it returns.

    Every job still runs concurrently and the runs come back in job order, as from one
    ``run_batch``. If a slice raises (the executor itself failed) or the caller is cancelled,
    the other slices are cancelled and awaited before the exception propagates.
    """
    n = len(jobs)
    size = max(1, -(-n // SLICES))

    async def one_slice(part: Sequence[AgentJob]) -> list[AgentRun]:
        runs = await run(part)
        for r in runs:
            counts.add_run(r)
        return runs

    with paced(n):  # the slices are smaller than the executor's own threshold
        tasks = [asyncio.ensure_future(one_slice(jobs[i:i + size])) for i in range(0, n, size)]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            await cancel_and_wait(tasks)
            raise
    return [r for part in parts for r in part]


# -- the display --------------------------------------------------------------------------------------------------
#: What :func:`display` returns when it is not enabled: nothing to set up on every pattern run.
_NO_DISPLAY: "contextlib.nullcontext[None]" = contextlib.nullcontext()


def display(enabled: bool, infra: Any, label: str, planned: int | None) -> ContextManager[ProgressCounts | None]:
    """Show the progress of ``infra``'s agents while the block runs (the patterns' ``progress=True``).

    Args:
        enabled: The pattern's ``progress`` argument; ``False``: nothing at all.
        infra: The coordination whose agents are counted.
        label: The pattern's name, shown first.
        planned: Agents the pattern expects to run (``None``: unknown, no ETA).

    Returns:
        A context manager whose value is the counts being shown, or ``None`` when
        nothing is shown (disabled, stderr is not an interactive terminal, or a display
        already runs for ``infra``: its counts then include these agents).
    """
    if not enabled:
        return _NO_DISPLAY
    return _display(infra, label, planned)


@contextlib.contextmanager
def _display(infra: Any, label: str, planned: int | None) -> Iterator[ProgressCounts | None]:
    stream = _stderr() if infra not in TRACKED else None
    if stream is None:
        yield None
        return
    from rich.console import Console
    from rich.live import Live

    console = Console(file=stream)
    if not console.is_interactive:
        yield None
        return
    counts = ProgressCounts(label, planned)
    live = Live(counts, console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False)
    TRACKED[infra] = counts
    try:
        with live:
            try:
                yield counts
            finally:
                counts.ended = time.monotonic()
                live.refresh()
    finally:
        del TRACKED[infra]


async def follow(items: AsyncIterator[T], infra: Any, label: str, planned: int | None) -> AsyncIterator[T]:
    """Yield from the async generator ``items`` under :func:`display` (``MapReduce.stream(progress=True)``).

    Closing this generator closes ``items`` (cancelling what it runs), then ends the display.
    """
    with display(True, infra, label, planned):
        try:
            async for x in items:
                yield x
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()


def _stderr() -> TextIO | None:
    """``sys.stderr`` when it is a TTY, else ``None``."""
    stream = sys.stderr
    try:
        return stream if stream is not None and stream.isatty() else None
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return None
