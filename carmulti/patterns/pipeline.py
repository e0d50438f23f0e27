"""Pipeline: a linear chain where each stage's output feeds the next.

As in car-multi, a pipeline is a sequential swarm: stage k gets the original
task plus the succeeded earlier stages' findings (300-byte truncation), each
stage is budget-gated, and a failed stage does not stop the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import tracing
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec
from .swarm import Swarm, SwarmMode

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["Pipeline", "PipelineResult"]


@dataclass
class PipelineResult:
    """Result of :meth:`Pipeline.run`.

    Attributes:
        task: The task.
        stages: One output per stage, in order.
        final_answer: The last stage's answer; ``""`` when the last stage failed
            or there are no stages.
    """

    task: str
    stages: list[AgentOutput]
    final_answer: str

    @property
    def all_succeeded(self) -> bool:
        return all(s.succeeded for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "stages": [s.to_dict() for s in self.stages], "final_answer": self.final_answer}


class Pipeline:
    """Stages run one after another (a sequential :class:`Swarm`)."""

    def __init__(self, stages: Sequence[AgentSpec]) -> None:
        self._swarm = Swarm(stages, SwarmMode.SEQUENTIAL)
        self.stages = self._swarm.agents

    @tracing.workflow("pipeline")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> PipelineResult:
        """Run every stage. Stage failures are outputs, never exceptions."""
        check_runner(runner)
        result = await self._swarm._run(task, runner, infra)
        last = result.outputs[-1] if result.outputs else None
        final = last.answer if last is not None and last.succeeded else ""
        return PipelineResult(task, result.outputs, final)
