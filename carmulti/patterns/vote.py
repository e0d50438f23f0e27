"""Vote: N agents answer independently; the most common normalized answer wins."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from .. import tracing
from ..lifecycle import run_finalizer
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec
from .swarm import Swarm, SwarmMode

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["Vote", "VoteResult", "normalize_vote", "tally"]


def normalize_vote(answer: str) -> str:
    """The comparison key of a vote: whitespace collapsed and stripped, casefolded,
    one trailing ``.`` dropped. ``"  Paris.\\n" -> "paris"``."""
    s = " ".join(answer.split()).casefold()
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s


def tally(votes: Sequence[AgentOutput]) -> tuple[str, float, int]:
    """Plurality over the succeeded votes.

    Returns:
        ``(winner, agreement_ratio, group_size)``: the original text of the first
        vote of the largest group (ties: the group whose first vote comes first
        in agent order), ``group size / succeeded votes``, and the group size.
        No succeeded vote: ``("[no agent produced an answer]", 0.0, 0)``.
    """
    groups: dict[str, list[int]] = {}
    ok = [v for v in votes if v.succeeded]
    for i, v in enumerate(ok):
        groups.setdefault(normalize_vote(v.answer), []).append(i)
    if not groups:
        return S.NO_ANSWER, 0.0, 0
    best = max(groups.values(), key=lambda idx: (len(idx), -idx[0]))
    return ok[best[0]].answer, len(best) / len(ok), len(best)


@dataclass
class VoteResult:
    """Result of :meth:`Vote.run`.

    Attributes:
        task: The task.
        votes: One output per agent, in agent order.
        winner: The winning answer (original text) or the synthesizer's answer.
        agreement_ratio: Size of the winning group / succeeded votes (0.0 when none).
    """

    task: str
    votes: list[AgentOutput]
    winner: str
    agreement_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "votes": [v.to_dict() for v in self.votes], "winner": self.winner,
                "agreement_ratio": self.agreement_ratio}


class Vote:
    """Agents answer in parallel (a parallel swarm); normalized plurality wins.

    With a synthesizer and no strict majority (``agreement_ratio <= 0.5``), the
    synthesizer picks the answer; on budget denial or failure the plurality
    winner stands (synthesizers are optional finalizers).
    """

    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        self._swarm = Swarm(agents, SwarmMode.PARALLEL)
        self.agents = self._swarm.agents
        self.synthesizer: AgentSpec | None = None

    def with_synthesizer(self, spec: AgentSpec) -> "Vote":
        v = copy.copy(self)
        v.synthesizer = spec
        return v

    @tracing.workflow("vote")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> VoteResult:
        """Collect the votes and pick the winner."""
        check_runner(runner)
        sw = await self._swarm._run(task, runner, infra)
        winner, ratio, _ = tally(sw.outputs)
        ok = [v for v in sw.outputs if v.succeeded]
        if self.synthesizer is not None and ok and ratio <= 0.5:
            lines = "\n".join(S.finding_line(v.name, v.answer) for v in ok)
            out = await run_finalizer(infra, runner, self.synthesizer, S.VOTE_SYNTH_TASK.format(task=task, lines=lines))
            if out is not None:
                winner = out.answer
        return VoteResult(task, sw.outputs, winner, ratio)
