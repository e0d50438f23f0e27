"""MapReduce: fan out one mapper agent per item, then reduce their answers.

Mapper ``i`` is a clone of the mapper spec named ``{mapper.name}_{i}`` with the
task ``"{task}\\n\\nItem:\\n{item}"``; at most ``max_concurrent`` mappers run at
once (a fixed set of ``max_concurrent`` feeder coroutines pulls the items
lazily, so live agents are O(max_concurrent), not O(items)); each mapper is
budget-gated right before it starts. When ``max_concurrent >= len(items)``,
:meth:`MapReduce.run` dispatches the mappers in slices of :data:`MAP_SLICE`
instead, with no feeder per item. The reducer gets
``"{task}\\n\\nMapper outputs:\\n"`` followed by ``- {name}: {answer}`` lines of
the succeeded mappers, in item order.

Scale features:

* ``reduce_fan_in=k``: tree reduction. While more than ``k`` answers remain,
  they are cut into chunks of ``k`` (in order) and each chunk goes to an
  intermediate reducer named ``{reducer.name}_l{level}_{j}`` with the same
  reducer task format; no reducer ever sees more than ``k`` answers.
* :meth:`MapReduce.stream` yields ``(index, output)`` of mappers as they finish,
  pulling items from any (async) iterable, so a caller can consume millions of
  items without holding them or their outputs.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Iterable, Sequence, Sized

from .. import _strings as S
from .. import tracing
from .._aio import cancel_and_wait
from .._validate import int_at_least
from ..executors.base import AgentJob
from ..lifecycle import conclude, paced, reserve, run_load_bearing, run_one, run_round
from ..progress import display as progress_display
from ..progress import follow as follow_progress
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["MapReduce", "MapReduceResult"]

_END = object()  # end of an async item source

#: Mappers admitted and dispatched together when every item runs at once (``MapReduce._map_all``): large
#: enough that a slice is one executor batch (``ProcessExecutor`` frames hold up to ``batch_size`` jobs),
#: small enough that the first agents start within milliseconds of a million-item run.
MAP_SLICE = 4096


@dataclass
class MapReduceResult:
    """Result of :meth:`MapReduce.run`.

    Attributes:
        task: The task.
        map_outputs: One output per item, in item order.
        reduced_answer: The final reducer's answer; ``""`` when there were no items.
        reduce_outputs: Intermediate reducer outputs of a tree reduction, level by
            level (empty without ``reduce_fan_in`` or when it was not needed).
    """

    task: str
    map_outputs: list[AgentOutput]
    reduced_answer: str
    reduce_outputs: list[AgentOutput] = field(default_factory=list)

    @property
    def all_succeeded(self) -> bool:
        return all(o.succeeded for o in self.map_outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "map_outputs": [o.to_dict() for o in self.map_outputs],
                "reduced_answer": self.reduced_answer, "reduce_outputs": [o.to_dict() for o in self.reduce_outputs]}


class MapReduce:
    """One mapper per item, bounded concurrency, one reducer (or a tree of them).

    Args:
        mapper: Template of the mapper agents.
        reducer: The reducing agent (load-bearing).
        max_concurrent: Mappers (and intermediate reducers) running at once
            (>= 1, default 5 as in Rust).
        reduce_fan_in: Most answers any one reducer sees (>= 2), or ``None`` for
            a single flat reduce.

    Raises:
        ValueError: ``max_concurrent`` is not an int >= 1, or ``reduce_fan_in`` not an int >= 2
            nor None (a bool never is).
        TypeError: ``mapper``/``reducer`` is not an ``AgentSpec``.
    """

    def __init__(self, mapper: AgentSpec, reducer: AgentSpec, max_concurrent: int = 5, *,
                 reduce_fan_in: int | None = None) -> None:
        int_at_least(max_concurrent, 1, "MapReduce max_concurrent")
        int_at_least(reduce_fan_in, 2, "MapReduce reduce_fan_in", allow_none=True)
        for what, spec in (("mapper", mapper), ("reducer", reducer)):
            if not isinstance(spec, AgentSpec):
                raise TypeError(f"MapReduce {what} must be an AgentSpec, got {type(spec).__name__}")
        self.mapper = mapper
        self.reducer = reducer
        self.max_concurrent = max_concurrent
        self.reduce_fan_in = reduce_fan_in
        self.isolated = False

    def with_max_concurrent(self, n: int) -> "MapReduce":
        m = MapReduce(self.mapper, self.reducer, n, reduce_fan_in=self.reduce_fan_in)
        m.isolated = self.isolated
        return m

    def with_isolation(self) -> "MapReduce":
        """Return a copy whose mappers write to per-agent overlays, each merged when it succeeds
        (as it finishes; when every mapper runs at once, ``max_concurrent >= len(items)``, when its slice of
        :data:`MAP_SLICE` mappers is done)."""
        m = copy.copy(self)
        m.isolated = True
        return m

    # -- map phase -------------------------------------------------------------------
    def stream(self, task: str, items: Iterable[str] | AsyncIterable[str], runner: "AgentRunner",
               infra: "SharedInfra", *, progress: bool = False) -> AsyncIterator[tuple[int, AgentOutput]]:
        """Run the mappers and yield ``(item index, output)`` as each finishes (completion order).

        Items are pulled lazily, at most ``max_concurrent`` mappers are live and
        at most ``2 * max_concurrent`` finished outputs wait for the consumer
        (backpressure). Leaving the loop early and closing the generator
        (``async with contextlib.aclosing(mr.stream(...)) as s: async for ...``)
        cancels the mappers in flight. No reducer runs.

        Args:
            progress: Show a live display of the agents (done / failed / skipped,
                tokens, cost, rate, ETA) on stderr until the stream ends, when stderr is a
                terminal; nothing otherwise (:mod:`carmulti.progress`).

        Raises:
            TypeError: an item is not a ``str`` (names its index); mappers
                already started finish, no new one starts.
        """
        mappers = self._stream(task, items, runner, infra)
        if not progress:
            return mappers
        planned = len(items) if isinstance(items, Sized) else None
        return follow_progress(mappers, infra, "MapReduce", planned)

    async def _stream(self, task: str, items: Iterable[str] | AsyncIterable[str], runner: "AgentRunner",
                      infra: "SharedInfra") -> AsyncIterator[tuple[int, AgentOutput]]:
        check_runner(runner)
        width = self.max_concurrent
        limit = 2 * width
        # Finished outputs wait here for the consumer. Backpressure: a feeder that
        # finds `limit` outputs waiting parks on one shared future that the
        # consumer resolves once the backlog halves (a Semaphore would cost
        # O(waiters) per release with thousands of feeders).
        queue: asyncio.Queue[tuple[int, AgentOutput] | None] = asyncio.Queue()
        drained: list[asyncio.Future[None] | None] = [None]
        loop = asyncio.get_running_loop()
        mapper, isolated = self.mapper, self.isolated
        name_head, task_head = S.mapper_name_head(mapper.name), S.mapper_task_head(task)  # as in _map_all
        error: list[BaseException] = []
        counter = [0]
        pump: asyncio.Task[None] | None = None
        if hasattr(items, "__aiter__"):
            # One pump task reads the async source; feeders take from a bounded queue.
            item_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=width)

            async def pump_items() -> None:
                ended = True
                try:
                    async for x in items:
                        await item_q.put(x)
                except asyncio.CancelledError:
                    ended = False  # the stream is closing and cancels the feeders; the queue may be full
                    raise
                finally:
                    if ended:
                        for _ in range(width):
                            await item_q.put(_END)

            pump = asyncio.ensure_future(pump_items())

            async def next_raw() -> tuple[bool, Any]:
                x = await item_q.get()
                return (x is not _END, x)
        else:
            source = iter(items)

            async def next_raw() -> tuple[bool, Any]:
                for x in source:
                    return True, x
                return False, None

        async def feeder() -> None:
            while not error:
                ok, item = await next_raw()
                if not ok:
                    return
                i = counter[0]
                counter[0] += 1
                if not isinstance(item, str):
                    error.append(TypeError(f"MapReduce items[{i}] must be a str, got {type(item).__name__}"))
                    return
                name = name_head + str(i)
                skipped = reserve(infra, name)
                if skipped is not None:
                    out = skipped
                else:
                    job = AgentJob(mapper.with_name(name), task_head + item, isolated=isolated)
                    out = conclude(infra, await run_one(infra, runner, job), name)
                while queue.qsize() >= limit:
                    fut = drained[0]
                    if fut is None or fut.done():
                        fut = drained[0] = loop.create_future()
                    await fut
                queue.put_nowait((i, out))

        async def drive() -> None:
            tasks = [asyncio.ensure_future(feeder()) for _ in range(width)]
            try:
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in pending:  # one feeder failed: stop the others starting mappers
                    t.cancel()
                if pending:
                    await asyncio.wait(pending)
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            except asyncio.CancelledError:
                await cancel_and_wait(tasks)
                raise
            finally:
                queue.put_nowait(None)

        driver = asyncio.ensure_future(drive())
        try:
            while True:
                got = await queue.get()
                if got is None:
                    break
                fut = drained[0]
                if fut is not None and not fut.done() and queue.qsize() <= limit // 2:
                    fut.set_result(None)
                yield got
            await driver  # re-raise a feeder failure
            if error:
                raise error[0]
        finally:
            for t in (driver, pump):
                if t is not None and not t.done():
                    t.cancel()
                    try:
                        await t
                    except asyncio.CancelledError:
                        pass

    # -- whole run -------------------------------------------------------------------
    @tracing.workflow("map_reduce")
    async def run(self, task: str, items: Sequence[str], runner: "AgentRunner", infra: "SharedInfra", *,
                  progress: bool = False) -> MapReduceResult:
        """Map every item, then reduce.

        Args:
            progress: Show a live display of the agents (done / failed / skipped,
                tokens, cost, rate, ETA) on stderr while it runs, when stderr is a
                terminal; nothing otherwise (:mod:`carmulti.progress`).

        Raises:
            TypeError: an item is not a ``str`` (names its index); nothing runs.
            AgentFailed: a reducer failed (``partial`` holds the result so far).
            BudgetExhausted: the budget denied a reducer (``partial`` likewise).
        """
        planned = len(items) + 1 if progress and isinstance(items, Sized) else None  # mappers + final reducer
        with progress_display(progress, infra, "MapReduce", planned):
            return await self._run(task, items, runner, infra)

    async def _run(self, task: str, items: Sequence[str], runner: "AgentRunner", infra: "SharedInfra") -> MapReduceResult:
        check_runner(runner)
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"MapReduce items[{i}] must be a str, got {type(item).__name__}")
        n = len(items)
        if n == 0:
            return MapReduceResult(task, [], "")
        with paced(min(n, self.max_concurrent)):  # as many in flight; the jobs, outputs and entries too
            outputs: list[AgentOutput | None] = [None] * n
            if self.max_concurrent >= n:  # every mapper at once: slices of MAP_SLICE, no feeder task per item
                await self._map_all(task, items, runner, infra, outputs)
            else:
                async for i, out in self.stream(task, items, runner, infra):
                    outputs[i] = out
            map_outputs: list[AgentOutput] = outputs  # type: ignore[assignment]  # every slot is filled
            result = MapReduceResult(task, map_outputs, "")
            entries = [(o.name, o.answer) for o in map_outputs if o.succeeded]
            k = self.reduce_fan_in
            level = 0
            while k is not None and len(entries) > k:
                level += 1
                chunks = [entries[j:j + k] for j in range(0, len(entries), k)]
                outs = await self._reduce_level(task, chunks, level, runner, infra, result)
                result.reduce_outputs.extend(outs)
                entries = [(o.name, o.answer) for o in outs]
            out = await run_load_bearing(infra, runner, AgentJob(self.reducer, _reducer_task(task, entries)), partial=result)
            result.reduced_answer = out.answer
            return result

    async def _map_all(self, task: str, items: list[str], runner: "AgentRunner", infra: "SharedInfra",
                       outputs: list[AgentOutput | None]) -> None:
        """Map every item at once (``max_concurrent >= len(items)``): the same gating, names, tasks and
        outputs as :meth:`stream`, without a feeder task per item (a million mappers in flight cost a
        million tasks less).

        Items are admitted and dispatched in slices of :data:`MAP_SLICE`, item order: each slice starts
        while the next is built, and is published (overlays merged, outputs recorded) when it is done,
        while later slices still wait on their models. Building a million jobs before the first one
        started cost 7 s of a 10 s-latency run (``python -m bench fanout --agents 1000000 --latency 10s
        --concurrency 1000000``).
        """
        mapper, isolated = self.mapper, self.isolated
        # S.MAPPER_NAME / S.MAPPER_TASK by concatenation: two format calls less per mapper (0.4 us)
        name_head, task_head = S.mapper_name_head(mapper.name), S.mapper_task_head(task)
        pending: list[asyncio.Future[None]] = []

        async def settle(start: int, jobs: list[AgentJob]) -> None:
            outputs[start:start + len(jobs)] = await run_round(infra, runner, jobs)

        try:
            for start in range(0, len(items), MAP_SLICE):
                jobs = [AgentJob(mapper.with_name(name_head + str(i)), task_head + items[i], isolated=isolated)
                        for i in range(start, min(start + MAP_SLICE, len(items)))]
                pending.append(asyncio.ensure_future(settle(start, jobs)))
                await asyncio.sleep(0)  # this slice is gated and starts before the next one is built
            await asyncio.gather(*pending)
        except BaseException:
            await cancel_and_wait(pending)
            raise

    async def _reduce_level(self, task: str, chunks: list[list[tuple[str, str]]], level: int,
                            runner: "AgentRunner", infra: "SharedInfra", partial: MapReduceResult) -> list[AgentOutput]:
        outs: list[AgentOutput | None] = [None] * len(chunks)
        it = iter(range(len(chunks)))

        async def worker() -> None:
            for j in it:
                spec = self.reducer.with_name(f"{self.reducer.name}_l{level}_{j}")
                outs[j] = await run_load_bearing(infra, runner, AgentJob(spec, _reducer_task(task, chunks[j])),
                                                 partial=partial)

        await asyncio.gather(*[worker() for _ in range(min(self.max_concurrent, len(chunks)))])
        return outs  # type: ignore[return-value]


def _reducer_task(task: str, entries: list[tuple[str, str]]) -> str:
    lines = "\n".join(S.finding_line(name, answer) for name, answer in entries)
    return S.REDUCER_TASK.format(task=task, lines=lines)
