"""AdversarialReview: the exact review prompt, findings read from a fenced block or the first
object, severities, blocker_count, passed, and the inconclusive review that never passes
silently; on every executor."""

from __future__ import annotations

import json
from typing import Any

import pytest

from carmulti import (
    AdversarialReview,
    AdversarialReviewResult,
    AgentSpec,
    BudgetLimits,
    ReviewFinding,
    is_budget_skipped,
)
from carmulti.patterns import SEVERITY_INCONCLUSIVE
from carmulti.patterns.adversarial_review import parse_review

CRITERIA = ["Handles empty input", "Has tests"]


class ReviewerRunner:
    """The reviewer replies ``metadata["reply"]``, raises ``metadata["raise"]``, or (``echo``) returns
    one failed finding whose evidence is its task and whose criterion is its system prompt."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        md = spec.metadata
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if md.get("echo"):
            return json.dumps({"passed": False, "findings": [
                {"criterion": spec.system_prompt, "passed": False, "evidence": task, "severity": "info"}]})
        return md["reply"]


def reviewer(**md: Any) -> AgentSpec:
    return AgentSpec("reviewer", "Find problems.", metadata=md)


def review_json(passed: bool, *findings: tuple[str, bool, str]) -> str:
    return json.dumps({"passed": passed, "findings": [
        {"criterion": c, "passed": p, "evidence": f"src/app.py:{i + 1}", "severity": s}
        for i, (c, p, s) in enumerate(findings)]}, indent=2)


async def test_a_clean_review_passes(make_infra):
    infra = make_infra()
    reply = "```json\n" + review_json(True, ("Handles empty input", True, "info"), ("Has tests", True, "minor")) + "\n```"
    res = await AdversarialReview(reviewer(reply=reply), CRITERIA).run("def f(): ...", ReviewerRunner(), infra)
    assert isinstance(res, AdversarialReviewResult)
    assert res.spec == "1. Handles empty input\n2. Has tests"
    assert (res.passed, res.blocker_count, res.inconclusive) == (True, 0, False)
    assert res.findings == [ReviewFinding("Handles empty input", True, "src/app.py:1", "info"),
                            ReviewFinding("Has tests", True, "src/app.py:2", "minor")]
    assert res.reviewer_output.answer == reply and res.reviewer_output.succeeded
    assert "agent.reviewer.answer" not in infra.state  # a fresh reviewer, no state write


async def test_a_failed_blocker_fails_the_review_unless_told_otherwise(make_infra):
    infra = make_infra()
    reply = ("Here is my review.\n" + review_json(True, ("Handles empty input", False, "BLOCKER"),
                                                  ("Has tests", True, "blocker"), ("Style", False, "major"))
             + "\nThat is all.")
    res = await AdversarialReview(reviewer(reply=reply), CRITERIA).run("w", ReviewerRunner(), infra)
    assert [f.severity for f in res.findings] == ["blocker", "blocker", "major"]
    assert res.blocker_count == 1  # only failed blockers count
    assert res.passed is False and res.inconclusive is False
    lenient = await AdversarialReview(reviewer(reply=reply), CRITERIA, fail_on_blockers=False).run(
        "w", ReviewerRunner(), infra)
    assert (lenient.passed, lenient.blocker_count) == (True, 1)


async def test_the_reviewers_own_verdict_is_needed(make_infra):
    reply = review_json(False, ("Has tests", False, "minor"))
    res = await AdversarialReview(reviewer(reply=reply), CRITERIA).run("w", ReviewerRunner(), make_infra())
    assert (res.passed, res.blocker_count, res.inconclusive) == (False, 0, False)


async def test_an_unparseable_reply_is_inconclusive_never_a_pass(make_infra):
    reply = "Looks great to me, ship it! " * 200  # 5,800 characters, no JSON
    res = await AdversarialReview(reviewer(reply=reply), CRITERIA).run("w", ReviewerRunner(), make_infra())
    assert (res.passed, res.inconclusive, res.blocker_count) == (False, True, 0)
    (finding,) = res.findings
    assert finding == ReviewFinding("(unparseable reviewer response)", False, reply[:1024], "inconclusive")
    assert len(finding.evidence) == 1024 and finding.severity == SEVERITY_INCONCLUSIVE
    assert res.reviewer_output.answer == reply


@pytest.mark.parametrize("reply", [
    '{"findings": []}',                       # no verdict
    '{"passed": "yes", "findings": []}',      # not a boolean
    '{"passed": true, "findings": "none"}',   # findings not a list
    '{"passed": true, "findings": [1, 2]}',   # findings not objects
    "```json\n{\"passed\": true,\n```",        # a broken block and nothing else
    "[true]",                                 # not an object
], ids=["no-passed", "passed-not-bool", "findings-not-list", "findings-not-objects", "broken-fence", "array"])
async def test_malformed_reviews_are_inconclusive(make_infra, reply):
    res = await AdversarialReview(reviewer(reply=reply), CRITERIA).run("w", ReviewerRunner(), make_infra())
    assert (res.passed, res.inconclusive) == (False, True)
    assert res.findings[0].evidence == reply


async def test_a_failing_reviewer_is_inconclusive(make_infra):
    res = await AdversarialReview(reviewer(**{"raise": "x" * 2000}), CRITERIA).run("w", ReviewerRunner(), make_infra())
    assert (res.passed, res.inconclusive) == (False, True)
    assert res.findings == [ReviewFinding("(reviewer did not answer)", False, "x" * 1024, "inconclusive")]
    assert res.reviewer_output.error == "x" * 2000


async def test_a_reviewer_the_budget_refuses_is_inconclusive(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=0))
    res = await AdversarialReview(reviewer(reply="{}"), CRITERIA).run("w", ReviewerRunner(), infra)
    assert (res.passed, res.inconclusive) == (False, True)
    assert is_budget_skipped(res.reviewer_output)
    assert res.findings[0].evidence == "budget skipped: agent limit reached: 0/0"


async def test_the_review_prompt_is_the_crates(make_infra):
    res = await AdversarialReview(reviewer(echo=True), CRITERIA).run("print('hi')", ReviewerRunner(), make_infra())
    (finding,) = res.findings
    assert finding.criterion == "Find problems."  # the reviewer's own system prompt, unchanged
    assert finding.evidence == """You are an adversarial reviewer. Your job is to find problems.

## Acceptance Criteria
1. Handles empty input
2. Has tests

## Work Output to Review
print('hi')

## Instructions
Evaluate the work output against EACH acceptance criterion above.
For each criterion, determine if it PASSES or FAILS. Provide specific evidence
(file paths, line numbers, code snippets, or direct quotes from the output).

Be strict. If a criterion is ambiguous, assume it should be fully met.
Flag anything suspicious as a "blocker" or "major" finding.

Respond with a JSON object:
```json
{
  "passed": true/false,
  "findings": [
    {
      "criterion": "criterion text",
      "passed": true/false,
      "evidence": "specific evidence with file:line references",
      "severity": "blocker|major|minor|info"
    }
  ]
}
```"""


def test_finding_defaults_fail_closed():
    parsed = parse_review('{"passed": true, "findings": [{"criterion": "c"}, {"passed": "yes", "severity": " Major "}]}')
    assert parsed == (True, [ReviewFinding("c", False, "", "info"), ReviewFinding("", False, "", "major")])
    assert parse_review('{"passed": false}') == (False, [])


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="reviewer must be an AgentSpec"):
        AdversarialReview("r", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="criteria must be a list of str"):
        AdversarialReview(reviewer(), "one criterion")
    with pytest.raises(TypeError, match="fail_on_blockers must be a bool"):
        AdversarialReview(reviewer(), [], fail_on_blockers=1)  # type: ignore[arg-type]
    assert AdversarialReview(reviewer(), []).fail_on_blockers is True


async def test_work_output_must_be_text(infra):
    with pytest.raises(TypeError, match="work_output must be a str"):
        await AdversarialReview(reviewer(), []).run(42, ReviewerRunner(), infra)  # type: ignore[arg-type]


def test_to_dict_uses_the_rust_field_names():
    d = AdversarialReviewResult("1. c", False, [ReviewFinding("c", False, "e", "major")], None, 0, False).to_dict()
    assert list(d) == ["spec", "passed", "findings", "reviewer_output", "blocker_count", "inconclusive"]
