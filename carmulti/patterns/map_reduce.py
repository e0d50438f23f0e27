"""MapReduce: fan out one mapper agent per item, then reduce their answers.

Mapper ``i`` is a clone of the mapper spec named ``{mapper.name}_{i}`` with the
task ``"{task}\\n\\nItem:\\n{item}"``; at most ``max_concurrent`` mappers run at
once (a fixed set of ``max_concurrent`` feeder coroutines pulls the items, so
live agents are O(max_concurrent), not O(items)); each mapper is budget-gated
right before it starts. The reducer gets ``"{task}\\n\\nMapper outputs:\\n"``
followed by ``- {name}: {answer}`` lines of the succeeded mappers, in item order.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from ..executors.base import AgentJob
from ..types import AgentOutput, AgentSpec
from ._common import gate, run_load_bearing, settle

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["MapReduce", "MapReduceResult"]


@dataclass
class MapReduceResult:
    """Result of :meth:`MapReduce.run`.

    Attributes:
        task: The task.
        map_outputs: One output per item, in item order.
        reduced_answer: The reducer's answer; ``""`` when there were no items.
    """

    task: str
    map_outputs: list[AgentOutput]
    reduced_answer: str

    @property
    def all_succeeded(self) -> bool:
        return all(o.succeeded for o in self.map_outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "map_outputs": [o.to_dict() for o in self.map_outputs],
                "reduced_answer": self.reduced_answer}


class MapReduce:
    """One mapper per item, bounded concurrency, one reducer.

    Args:
        mapper: Template of the mapper agents.
        reducer: The reducing agent (load-bearing).
        max_concurrent: Mappers running at once (>= 1, default 5 as in Rust).

    Raises:
        ValueError: ``max_concurrent < 1``.
    """

    def __init__(self, mapper: AgentSpec, reducer: AgentSpec, max_concurrent: int = 5) -> None:
        if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or max_concurrent < 1:
            raise ValueError(f"MapReduce max_concurrent must be an int >= 1, got {max_concurrent!r}")
        for what, spec in (("mapper", mapper), ("reducer", reducer)):
            if not isinstance(spec, AgentSpec):
                raise TypeError(f"MapReduce {what} must be an AgentSpec, got {type(spec).__name__}")
        self.mapper = mapper
        self.reducer = reducer
        self.max_concurrent = max_concurrent
        self.isolated = False

    def with_max_concurrent(self, n: int) -> "MapReduce":
        m = MapReduce(self.mapper, self.reducer, n)
        m.isolated = self.isolated
        return m

    def with_isolation(self) -> "MapReduce":
        """Return a copy whose mappers write to per-agent overlays, each merged when it succeeds."""
        m = copy.copy(self)
        m.isolated = True
        return m

    async def run(self, task: str, items: Sequence[str], runner: "AgentRunner", infra: "SharedInfra") -> MapReduceResult:
        """Map every item, then reduce.

        Raises:
            TypeError: an item is not a ``str`` (names its index); nothing runs.
            AgentFailed: the reducer failed (``partial`` holds the map outputs).
            BudgetExhausted: the budget denied the reducer (``partial`` likewise).
        """
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"MapReduce items[{i}] must be a str, got {type(item).__name__}")
        n = len(items)
        if n == 0:
            return MapReduceResult(task, [], "")
        outputs: list[AgentOutput | None] = [None] * n
        mapper = self.mapper
        isolated = self.isolated
        executor = infra.executor
        it = iter(range(n))

        async def feeder() -> None:
            for i in it:
                name = S.MAPPER_NAME.format(name=mapper.name, i=i)
                skipped = gate(infra, name)
                if skipped is not None:
                    outputs[i] = skipped
                    continue
                job = AgentJob(mapper.with_name(name), S.MAPPER_TASK.format(task=task, item=items[i]), isolated=isolated)
                run = await executor.run_agent(runner, job, infra)
                outputs[i] = settle(infra, run, name)

        width = min(self.max_concurrent, n)
        if width == 1:
            await feeder()
        else:
            await asyncio.gather(*[feeder() for _ in range(width)])
        map_outputs: list[AgentOutput] = outputs  # type: ignore[assignment] - every slot is filled
        partial = MapReduceResult(task, map_outputs, "")
        lines = "\n".join(S.FINDING_LINE.format(name=o.name, answer=o.answer) for o in map_outputs if o.succeeded)
        out = await run_load_bearing(infra, runner, self.reducer, S.REDUCER_TASK.format(task=task, lines=lines),
                                     partial=partial)
        partial.reduced_answer = out.answer
        return partial
