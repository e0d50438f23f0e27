"""AdversarialReview: a fresh reviewer, with no author context, checks work against acceptance criteria.

Port of car-multi 0.8+ ``patterns/adversarial_review.rs`` (0.27+ with the
``inconclusive`` severity; spec 4.9 and newer-patterns A.3). The review prompt,
the types and ``fail_on_blockers = True`` are the crate's; the parser and the
verdict rules follow the spec's recommendations (marked "[recommended]").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from .. import tracing
from ..executors.base import AgentJob
from ..lifecycle import conclude, reserve, run_one
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec
from ._replies import json_object

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["SEVERITIES", "SEVERITY_INCONCLUSIVE", "AdversarialReview", "AdversarialReviewResult", "ReviewFinding",
           "parse_review"]

#: The severities a reviewer is asked for, most severe first.
SEVERITIES = ("blocker", "major", "minor", "info")
#: Severity of the synthetic finding of a review that could not be read: "not adversarially verified".
SEVERITY_INCONCLUSIVE = S.SEVERITY_INCONCLUSIVE


@dataclass
class ReviewFinding:
    """One criterion's verdict.

    Attributes:
        criterion: The criterion, as the reviewer restated it.
        passed: Whether the work meets it.
        evidence: The reviewer's evidence (file:line references, quotes).
        severity: ``blocker``, ``major``, ``minor`` or ``info`` (lower-cased as
            the reviewer wrote it; ``info`` when missing), or ``inconclusive``
            for the synthetic finding of an unreadable review.
    """

    criterion: str
    passed: bool
    evidence: str
    severity: str

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "passed": self.passed, "evidence": self.evidence,
                "severity": self.severity}


@dataclass
class AdversarialReviewResult:
    """Result of :meth:`AdversarialReview.run`.

    Attributes:
        spec: The acceptance criteria as shown to the reviewer (``"1. ...\\n2. ..."``).
        passed: The review's verdict (see :class:`AdversarialReview`); never True
            when ``inconclusive``.
        findings: The reviewer's findings in its order; one synthetic
            ``inconclusive`` finding when the review could not be read.
        reviewer_output: The reviewer's output (with ``error`` set when it
            failed or the budget refused it).
        blocker_count: Findings with severity ``blocker`` that did not pass.
        inconclusive: The reviewer's reply could not be read as a review, or
            there was no reply (the work was not adversarially verified).
    """

    spec: str
    passed: bool
    findings: list[ReviewFinding] = field(default_factory=list)
    reviewer_output: AgentOutput | None = None
    blocker_count: int = 0
    inconclusive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "passed": self.passed, "findings": [f.to_dict() for f in self.findings],
                "reviewer_output": None if self.reviewer_output is None else self.reviewer_output.to_dict(),
                "blocker_count": self.blocker_count, "inconclusive": self.inconclusive}


class AdversarialReview:
    """A fresh reviewer sees only the work output and the criteria, and must find problems.

    The reviewer runs once, budget-gated, with its own spec (system prompt and
    tools unchanged, a mailbox of its own, no state write) on the task
    ``S.REVIEW_TASK``: the crate's prompt, with the criteria numbered
    ``"{i}. {criterion}"`` one per line and the work output substituted (the
    prompt is the *task* [recommended]; the JSON example is indented by two
    spaces [recommended]).

    Reading the reply [recommended]: the first ``json`` fenced block, else the
    first ``{`` at which a JSON object decodes; the object must have a boolean
    ``passed`` and, if present, a list of objects ``findings``. In a finding a
    missing or non-boolean ``passed`` counts as failed, a missing ``evidence``
    is ``""``, a missing ``severity`` is ``info``.

    Verdict [recommended]: ``blocker_count`` = failed findings of severity
    ``blocker``; ``passed`` = the reviewer's ``passed`` and, with
    ``fail_on_blockers``, no such blocker. An unreadable reply is never a
    silent pass: ``inconclusive = True``, ``passed = False`` and one finding
    ``ReviewFinding("(unparseable reviewer response)", False, <the reply, cut
    to 1,024 characters>, "inconclusive")``. A reviewer that fails or that the
    budget refuses is inconclusive too (port's choice: a denied reviewer "falls
    back rather than failing the whole run", spec A.6), with the criterion
    ``"(reviewer did not answer)"`` and its error (cut likewise) as evidence.

    Args:
        reviewer: The reviewing agent.
        criteria: The acceptance criteria, one string each.
        fail_on_blockers: A failed ``blocker`` finding fails the review even when
            the reviewer says it passed (the crate's ``new`` sets True).

    Raises:
        TypeError: ``reviewer`` is not an ``AgentSpec``, ``criteria`` is not a
            sequence of str (a single str is refused), or ``fail_on_blockers`` is
            not a bool.
    """

    def __init__(self, reviewer: AgentSpec, criteria: Sequence[str], fail_on_blockers: bool = True) -> None:
        if not isinstance(reviewer, AgentSpec):
            raise TypeError(f"AdversarialReview reviewer must be an AgentSpec, got {type(reviewer).__name__}")
        if isinstance(criteria, str) or not all(isinstance(c, str) for c in criteria):
            raise TypeError(f"AdversarialReview criteria must be a list of str, got {criteria!r}")
        if not isinstance(fail_on_blockers, bool):
            raise TypeError(f"AdversarialReview fail_on_blockers must be a bool, got {fail_on_blockers!r}")
        self.reviewer = reviewer
        self.criteria = list(criteria)
        self.fail_on_blockers = fail_on_blockers

    def criteria_text(self) -> str:
        """The criteria as the prompt shows them: ``"1. first\\n2. second"``."""
        return "\n".join(S.REVIEW_CRITERION_LINE.format(n=i + 1, criterion=c) for i, c in enumerate(self.criteria))

    def review_task(self, work_output: str) -> str:
        """The reviewer's task for ``work_output`` (``S.REVIEW_TASK``)."""
        return S.REVIEW_TASK.format(criteria=self.criteria_text(), work=work_output)

    @tracing.workflow("adversarial_review")
    async def run(self, work_output: str, runner: "AgentRunner", infra: "SharedInfra") -> AdversarialReviewResult:
        """Review ``work_output`` against the criteria.

        Args:
            work_output: The work to review (the author's answer, a diff, a report).

        Returns:
            The :class:`AdversarialReviewResult`; a failing or refused reviewer is
            an inconclusive result, never an exception.

        Raises:
            TypeError: ``work_output`` is not a str.
        """
        if not isinstance(work_output, str):
            raise TypeError(f"AdversarialReview.run work_output must be a str, got {type(work_output).__name__}")
        check_runner(runner)
        spec_text = self.criteria_text()
        name = self.reviewer.name
        out = reserve(infra, name)
        if out is None:
            run = await run_one(infra, runner, AgentJob(self.reviewer, self.review_task(work_output)))
            out = conclude(infra, run, name, write_state=False)
        if not out.succeeded:
            finding = ReviewFinding(S.REVIEWER_FAILED_CRITERION, False,
                                    (out.error or "")[:S.INCONCLUSIVE_EVIDENCE_CAP], SEVERITY_INCONCLUSIVE)
            return AdversarialReviewResult(spec_text, False, [finding], out, 0, True)
        parsed = parse_review(out.answer)
        if parsed is None:
            finding = ReviewFinding(S.UNPARSEABLE_CRITERION, False, out.answer[:S.INCONCLUSIVE_EVIDENCE_CAP],
                                    SEVERITY_INCONCLUSIVE)
            return AdversarialReviewResult(spec_text, False, [finding], out, 0, True)
        reviewer_passed, findings = parsed
        blockers = sum(1 for f in findings if f.severity == S.SEVERITY_BLOCKER and not f.passed)
        passed = reviewer_passed and (not self.fail_on_blockers or blockers == 0)
        return AdversarialReviewResult(spec_text, passed, findings, out, blockers, False)


def parse_review(reply: str) -> tuple[bool, list[ReviewFinding]] | None:
    """``(reviewer's passed, findings)`` of a review reply, or ``None`` when it is not a review.

    See :class:`AdversarialReview` for the rules.
    """
    obj = json_object(reply)
    if obj is None or not isinstance(obj.get("passed"), bool):
        return None
    raw = obj.get("findings", [])
    if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
        return None
    findings = []
    for f in raw:
        criterion = f.get("criterion", "")
        evidence = f.get("evidence", "")
        severity = f.get("severity", "info")
        findings.append(ReviewFinding(
            criterion if isinstance(criterion, str) else str(criterion),
            f.get("passed") is True,
            evidence if isinstance(evidence, str) else str(evidence),
            severity.strip().lower() if isinstance(severity, str) else "info",
        ))
    return obj["passed"], findings
