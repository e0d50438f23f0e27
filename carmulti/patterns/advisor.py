"""Advisor: a stronger model gives a bounded verdict; the executor stays in control of its loop.

Port of car-multi 0.21+ ``patterns/advisor.rs`` (spec 4.11 and newer-patterns
A.4): the use counter and its prologue (count first, refuse after), the prompt's
first lines and the five verdicts are the crate's; the rest follows the spec's
recommendations (marked "[recommended]").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _strings as S
from .. import tracing
from .._validate import int_at_least
from ..errors import AdvisorExhausted
from ..executors.base import AgentJob
from ..lifecycle import conclude, reserve, run_one
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec
from ._replies import json_object

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["VERDICT_KINDS", "Advisor", "AdvisorResult", "AdvisorVerdict", "parse_verdict"]

#: Verdict kind -> the JSON field that carries its text (Rust ``AdvisorVerdict`` variants).
VERDICT_KINDS: dict[str, str] = {
    "continue": "rationale",
    "plan": "guidance",
    "correction": "guidance",
    "stop": "reason",
    "uncertain": "reason",
}


@dataclass(frozen=True)
class AdvisorVerdict:
    """The advisor's verdict (Rust ``AdvisorVerdict``, externally tagged, snake_case).

    Attributes:
        kind: ``continue`` (go on; ``text`` is the rationale), ``plan`` or
            ``correction`` (``text`` is the guidance), ``stop`` or ``uncertain``
            (``text`` is the reason).
        text: The verdict's text.
    """

    kind: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """The Rust serde form, e.g. ``{"plan": {"guidance": "..."}}``."""
        return {self.kind: {VERDICT_KINDS[self.kind]: self.text}}


@dataclass
class AdvisorResult:
    """Result of :meth:`Advisor.consult`.

    Attributes:
        verdict: The verdict (``uncertain`` when the reply was malformed or the
            advisor did not answer).
        advisor_output: The advisor's output (``error`` set when it failed or the
            budget refused it).
        used: Consultations counted up to and including this one (this one's
            number, from 1; refused ones count).
        max_uses: The advisor's allowance.
    """

    verdict: AdvisorVerdict
    advisor_output: AgentOutput
    used: int
    max_uses: int

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "advisor_output": self.advisor_output.to_dict(),
                "used": self.used, "max_uses": self.max_uses}


class Advisor:
    """A bounded number of consultations of a (stronger) advisor agent.

    Each :meth:`consult` counts one use *before* anything runs, as the crate
    does (``used.fetch_add(1)``): a consultation that then fails still used its
    allowance, and a refused one (:class:`~carmulti.AdvisorExhausted`) counts
    too, so :meth:`used` may exceed ``max_uses`` after refusals.

    The advisor runs budget-gated, without tools and without writing state (no
    tools, no state mutation by the advisor: spec 4.11), on the task
    ``S.ADVISOR_TASK``: the crate's prompt, then ``"\\n\\nEvidence:\\n{task}"``
    [recommended]. The reply is read as the first ``json`` fenced block, else the
    first decodable JSON object [recommended]; its ``verdict`` must be one of
    ``continue | plan | correction | stop | uncertain`` (case and spaces ignored)
    and the field that carries that verdict's text (``rationale``, ``guidance``
    or ``reason``) a non-empty string. Anything else is malformed or incomplete:
    verdict ``uncertain`` with the reason ``malformed or incomplete advisor
    response`` (never treated as success). An advisor that fails or that the
    budget refuses gives verdict ``uncertain`` with the reason
    ``advisor failed: {error}`` (port's choice: the executor keeps control and
    decides).

    Args:
        advisor: The advisor agent.
        max_uses: Consultations allowed (an int >= 0).

    Raises:
        TypeError: ``advisor`` is not an ``AgentSpec``.
        ValueError: ``max_uses`` is not an int >= 0 (a bool never is).
    """

    def __init__(self, advisor: AgentSpec, max_uses: int) -> None:
        if not isinstance(advisor, AgentSpec):
            raise TypeError(f"Advisor advisor must be an AgentSpec, got {type(advisor).__name__}")
        self.advisor = advisor
        self.max_uses = int_at_least(max_uses, 0, "Advisor max_uses")
        self._used = 0

    def used(self) -> int:
        """Consultations counted so far (refused ones included)."""
        return self._used

    def remaining(self) -> int:
        """Consultations left: ``max(0, max_uses - used())``."""
        return max(0, self.max_uses - self._used)

    @tracing.workflow("advisor")
    async def consult(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> AdvisorResult:
        """Ask the advisor about ``task`` (the evidence: what the executor tried, what went wrong).

        Returns:
            The :class:`AdvisorResult`.

        Raises:
            AdvisorExhausted: ``max_uses`` consultations were already counted;
                its ``used`` is the count before this call (this call is counted
                all the same).
            TypeError: ``task`` is not a str (counted as well).
        """
        prior = self._used
        self._used = prior + 1
        if prior >= self.max_uses:
            raise AdvisorExhausted(prior, self.max_uses)
        if not isinstance(task, str):
            raise TypeError(f"Advisor.consult task must be a str, got {type(task).__name__}")
        check_runner(runner)
        name = self.advisor.name
        out = reserve(infra, name)
        if out is None:
            job = AgentJob(self.advisor, S.ADVISOR_TASK.format(task=task), register_spec_tools=False)
            out = conclude(infra, await run_one(infra, runner, job), name, write_state=False)
        if out.succeeded:
            verdict = parse_verdict(out.answer)
        else:
            verdict = AdvisorVerdict("uncertain", S.ADVISOR_FAILED.format(err=out.error))
        return AdvisorResult(verdict, out, prior + 1, self.max_uses)


def parse_verdict(reply: str) -> AdvisorVerdict:
    """The verdict an advisor's reply carries; ``uncertain`` when it is malformed or incomplete."""
    obj = json_object(reply)
    if obj is not None:
        kind = obj.get("verdict")
        if isinstance(kind, str):
            kind = kind.strip().lower()
            key = VERDICT_KINDS.get(kind)
            text = obj.get(key) if key is not None else None
            if isinstance(text, str) and text.strip():
                return AdvisorVerdict(kind, text)
    return AdvisorVerdict("uncertain", S.ADVISOR_MALFORMED)
