"""Supervisor: workers run in parallel, a supervisor reviews, repeat until approved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from .. import tracing
from .._validate import int_at_least
from ..executors.base import AgentJob
from ..lifecycle import run_load_bearing
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec
from .swarm import Swarm, SwarmMode

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["Supervisor", "SupervisorResult"]


@dataclass
class SupervisorResult:
    """Result of :meth:`Supervisor.run`.

    Attributes:
        task: The task.
        rounds: Worker outputs of each round (one list per round).
        supervisor_feedback: The supervisor's answer of each round, approving one included.
        final_answer: The last round's combined worker answers (the swarm summary).
        approved: The supervisor's last answer contained ``APPROVED``.
    """

    task: str
    rounds: list[list[AgentOutput]] = field(default_factory=list)
    supervisor_feedback: list[str] = field(default_factory=list)
    final_answer: str = ""
    approved: bool = False

    @property
    def total_rounds(self) -> int:
        return len(self.rounds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "rounds": [[o.to_dict() for o in r] for r in self.rounds],
            "supervisor_feedback": list(self.supervisor_feedback),
            "final_answer": self.final_answer,
            "approved": self.approved,
        }


class Supervisor:
    """Workers iterate under a supervisor until it approves or ``max_rounds`` is reached.

    Round 1 workers get the task; round k>1 workers get
    ``"{task}\\n\\nSupervisor feedback:\\n{feedback}"``. After each round the
    supervisor reviews the succeeded workers' answers; an answer containing
    ``APPROVED`` (case-sensitive) ends the loop. Not approved after
    ``max_rounds``: the result has ``approved=False`` (no exception).

    Args:
        workers: The worker agents (a parallel swarm each round).
        supervisor: The reviewing agent.
        max_rounds: Rounds at most (>= 1, default 3).

    Raises:
        ValueError: ``max_rounds`` is not an int >= 1 (a bool never is).
    """

    def __init__(self, workers: Sequence[AgentSpec], supervisor: AgentSpec, max_rounds: int = 3) -> None:
        int_at_least(max_rounds, 1, "Supervisor max_rounds")
        self._swarm = Swarm(workers, SwarmMode.PARALLEL)
        self.workers = self._swarm.agents
        self.supervisor = supervisor
        self.max_rounds = max_rounds

    def with_max_rounds(self, n: int) -> "Supervisor":
        return Supervisor(self.workers, self.supervisor, n)

    @tracing.workflow("supervisor")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> SupervisorResult:
        """Run the rounds.

        Raises:
            AgentFailed: the supervisor failed (``partial`` holds the result so far).
            BudgetExhausted: the budget denied the supervisor (``partial`` likewise).
        """
        check_runner(runner)
        result = SupervisorResult(task)
        worker_task = task
        for r in range(self.max_rounds):
            if r > 0:
                worker_task = S.SUPERVISOR_FEEDBACK.format(task=task, feedback=result.supervisor_feedback[-1])
            sw = await self._swarm.run(worker_task, runner, infra)
            result.rounds.append(sw.outputs)
            result.final_answer = sw.final_summary
            lines = "\n".join(S.finding_line(o.name, o.answer) for o in sw.outputs if o.succeeded)
            review = await run_load_bearing(infra, runner,
                                            AgentJob(self.supervisor, S.SUPERVISOR_REVIEW.format(task=task, lines=lines)),
                                            partial=result)
            result.supervisor_feedback.append(review.answer)
            if S.APPROVAL_TOKEN in review.answer:
                result.approved = True
                break
        return result
