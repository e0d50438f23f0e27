"""Tournament: competitors answer the task, a fresh judge compares them pairwise, single elimination.

Port of car-multi 0.21+ ``patterns/tournament.rs`` (newer-patterns spec A.1).
The struct, the result fields and the bracket loop are the crate's; where the
source was not visible the spec's recommendations are taken, each marked
"[recommended]" below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from .. import tracing
from ..executors.base import AgentJob
from ..lifecycle import conclude, reserve, run_one, run_round, shared_mailbox
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec
from ._replies import json_object

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["MatchResult", "Tournament", "TournamentResult"]


@dataclass
class MatchResult:
    """One pairwise judgment.

    Attributes:
        round: Bracket round, from 1.
        a: Name of candidate A (the first of the pair in bracket order).
        b: Name of candidate B.
        winner: ``a`` or ``b``.
        rationale: The judge's stated reason; ``""`` when its reply did not parse,
            it failed or the budget refused it.
    """

    round: int
    a: str
    b: str
    winner: str
    rationale: str

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "a": self.a, "b": self.b, "winner": self.winner, "rationale": self.rationale}


@dataclass
class TournamentResult:
    """Result of :meth:`Tournament.run`.

    Attributes:
        task: The task.
        candidates: The competitors' outputs, one per competitor in competitor
            order (failed and budget-skipped ones included, with ``error`` set).
        matches: Every judgment, in bracket order (round 1 first, pairs in order).
        winner_name: The champion's name; ``""`` when no competitor produced an answer.
        winner_answer: The champion's answer; ``""`` likewise.
        ranking: Names of the competitors that answered, best to worst: the
            winner, then the losers from the last match to the first (later
            elimination ranks higher). Failed competitors never appear.
    """

    task: str
    candidates: list[AgentOutput]
    matches: list[MatchResult] = field(default_factory=list)
    winner_name: str = ""
    winner_answer: str = ""
    ranking: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "candidates": [o.to_dict() for o in self.candidates],
                "matches": [m.to_dict() for m in self.matches], "winner_name": self.winner_name,
                "winner_answer": self.winner_answer, "ranking": list(self.ranking)}


class Tournament:
    """Single-elimination bracket over the competitors' answers, judged pair by pair.

    1. Every competitor answers ``task`` in parallel (one batch on the executor,
       each budget-gated like a parallel :class:`~carmulti.Swarm` agent [recommended];
       a refused one is a budget-skipped candidate). A competitor that succeeds
       writes ``agent.{name}.answer`` (writer ``swarm.{name}``), as swarm agents do.
    2. Competitors that failed or were skipped never enter the bracket.
       No answer at all: an empty result (``winner_name == ""``), not an error.
    3. Each round pairs ``alive[0]`` with ``alive[1]``, ``alive[2]`` with
       ``alive[3]``, ...; the odd one out (the last) gets a bye. Winners (and the
       bye, last) form the next round, until one is left: ``alive - 1`` matches.
       Matches of a round run one after another, as in the crate.
    4. Each match runs a fresh judge agent (the ``judge`` spec, no carried
       context: its own mailbox, no state write), budget-gated, on the task
       ``S.JUDGE_TASK`` (task, ``Candidate A ({name})``, ``Candidate B ({name})``)
       asking for ``{"winner": "A"|"B", "rationale": "..."}`` [recommended]. The
       reply is read as :func:`~carmulti.patterns._replies.json_object` does;
       ``winner`` is ``A`` or ``B`` (case and spaces ignored). A judge reply that
       names neither, a judge that fails and a judge the budget refuses all let
       side A advance with rationale ``""`` [recommended].

    Args:
        competitors: The competing agents (their order is the bracket order).
        judge: The judging agent, run once per match.

    Raises:
        TypeError: a competitor or the judge is not an ``AgentSpec``.
    """

    def __init__(self, competitors: Sequence[AgentSpec], judge: AgentSpec) -> None:
        self.competitors = list(competitors)
        for i, c in enumerate(self.competitors):
            if not isinstance(c, AgentSpec):
                raise TypeError(f"Tournament competitors[{i}] must be an AgentSpec, got {type(c).__name__}")
        if not isinstance(judge, AgentSpec):
            raise TypeError(f"Tournament judge must be an AgentSpec, got {type(judge).__name__}")
        self.judge = judge

    @tracing.workflow("tournament")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> TournamentResult:
        """Gather the candidates, then play the bracket.

        Returns:
            The :class:`TournamentResult`; never raises for a failing competitor or judge.
        """
        check_runner(runner)
        candidates = await self._gather(task, runner, infra)
        result = TournamentResult(task, candidates)
        alive = [(o.name, o.answer) for o in candidates if o.succeeded]
        if not alive:
            return result
        eliminated: list[str] = []
        rnd = 1
        while len(alive) > 1:
            advancing: list[tuple[str, str]] = []
            for i in range(0, len(alive), 2):
                if i + 1 == len(alive):
                    advancing.append(alive[i])  # the bye
                    continue
                a, b = alive[i], alive[i + 1]
                side, rationale = await self._judge(task, a, b, runner, infra)
                winner, loser = (a, b) if side == "A" else (b, a)
                result.matches.append(MatchResult(rnd, a[0], b[0], winner[0], rationale))
                eliminated.append(loser[0])
                advancing.append(winner)
            alive = advancing
            rnd += 1
        result.winner_name, result.winner_answer = alive[0]
        result.ranking = [alive[0][0], *reversed(eliminated)]
        return result

    async def _gather(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> list[AgentOutput]:
        mailbox = shared_mailbox()
        return await run_round(infra, runner, [AgentJob(spec, task, mailbox=mailbox) for spec in self.competitors])

    async def _judge(self, task: str, a: tuple[str, str], b: tuple[str, str], runner: "AgentRunner",
                     infra: "SharedInfra") -> tuple[str, str]:
        """``("A" | "B", rationale)`` for one match (see the class docstring for the fallbacks)."""
        if reserve(infra, self.judge.name) is not None:
            return "A", ""
        prompt = S.judge_task(task, a[0], a[1], b[0], b[1])
        out = conclude(infra, await run_one(infra, runner, AgentJob(self.judge, prompt)), self.judge.name,
                       write_state=False)
        if not out.succeeded:
            return "A", ""
        return parse_judgment(out.answer)


def parse_judgment(reply: str) -> tuple[str, str]:
    """``(side, rationale)`` of a judge's reply: ``("A" | "B", text)``, or ``("A", "")`` when it names neither."""
    obj = json_object(reply)
    if obj is None:
        return "A", ""
    side = obj.get("winner")
    if not isinstance(side, str) or side.strip().upper() not in ("A", "B"):
        return "A", ""
    rationale = obj.get("rationale")
    return side.strip().upper(), rationale if isinstance(rationale, str) else ""
