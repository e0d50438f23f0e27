"""Advisor: the five verdicts, malformed replies as ``uncertain``, uses counted when attempted
(refusals included, ``AdvisorExhausted`` with the count before the call), the crate's prompt, no
tools; on every executor."""

from __future__ import annotations

import json
from typing import Any

import pytest

from carmulti import (
    AdvisorExhausted,
    Advisor,
    AdvisorResult,
    AdvisorVerdict,
    AgentOutput,
    AgentSpec,
    BudgetLimits,
    is_budget_skipped,
)
from carmulti.patterns.advisor import parse_verdict


class AdvisorRunner:
    """Replies ``metadata["reply"]``, raises ``metadata["raise"]``, or (``echo``) a ``continue``
    verdict whose rationale is a JSON object of its task and the tools registered on its runtime."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        md = spec.metadata
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if md.get("echo"):
            seen = json.dumps({"task": task, "tools": sorted(runtime.tools)})
            return json.dumps({"verdict": "continue", "rationale": seen})
        return md["reply"]


def advisor(**md: Any) -> AgentSpec:
    return AgentSpec("advisor", "You advise.", tools=["shell"], metadata=md)


@pytest.mark.parametrize(("reply", "kind", "text"), [
    ('{"verdict": "continue", "rationale": "on track"}', "continue", "on track"),
    ('```json\n{"verdict": "plan", "guidance": "split it"}\n```', "plan", "split it"),
    ('Advice: {"verdict": " Correction ", "guidance": "fix the loop", "reason": "ignored"} -- end', "correction",
     "fix the loop"),
    ('{"verdict": "stop", "reason": "done already"}', "stop", "done already"),
    ('{"verdict": "uncertain", "reason": "not enough evidence"}', "uncertain", "not enough evidence"),
], ids=["continue", "plan", "correction", "stop", "uncertain"])
async def test_each_verdict(make_infra, reply, kind, text):
    res = await Advisor(advisor(reply=reply), 3).consult("evidence", AdvisorRunner(), make_infra())
    assert isinstance(res, AdvisorResult)
    assert res.verdict == AdvisorVerdict(kind, text)
    assert (res.used, res.max_uses) == (1, 3)
    assert res.advisor_output.answer == reply


@pytest.mark.parametrize("reply", [
    "Keep going, you are doing fine.",                    # no JSON
    '{"verdict": "proceed", "rationale": "x"}',           # unknown verdict
    '{"verdict": "plan", "rationale": "wrong field"}',    # incomplete: plan needs guidance
    '{"verdict": "stop", "reason": "   "}',               # incomplete: empty reason
    '{"verdict": "continue", "rationale": 7}',            # not text
    '{"rationale": "no verdict"}',
])
def test_malformed_or_incomplete_replies_are_uncertain(reply):
    assert parse_verdict(reply) == AdvisorVerdict("uncertain", "malformed or incomplete advisor response")


async def test_uses_are_counted_when_attempted_and_refusals_count_too(make_infra):
    infra = make_infra()
    adv = Advisor(advisor(reply='{"verdict": "continue", "rationale": "ok"}'), 2)
    assert (adv.used(), adv.remaining()) == (0, 2)
    assert (await adv.consult("a", AdvisorRunner(), infra)).used == 1
    assert (await adv.consult("b", AdvisorRunner(), infra)).used == 2
    assert (adv.used(), adv.remaining()) == (2, 0)
    with pytest.raises(AdvisorExhausted) as info:
        await adv.consult("c", AdvisorRunner(), infra)
    assert (info.value.used, info.value.max_uses) == (2, 2)
    assert str(info.value) == "advisor exhausted: used 2 of 2 allowed consultations"
    with pytest.raises(AdvisorExhausted) as info:
        await adv.consult("d", AdvisorRunner(), infra)
    assert info.value.used == 3  # the refused call before it was counted
    assert (adv.used(), adv.remaining()) == (4, 0)
    assert infra.budget.snapshot().agents_started == 2  # refusals start no agent


async def test_zero_uses_refuses_at_once(make_infra):
    adv = Advisor(advisor(reply="{}"), 0)
    with pytest.raises(AdvisorExhausted, match=r"^advisor exhausted: used 0 of 0 allowed consultations$"):
        await adv.consult("a", AdvisorRunner(), make_infra())
    assert adv.used() == 1


async def test_a_failing_advisor_still_used_its_allowance(make_infra):
    adv = Advisor(advisor(**{"raise": "model down"}), 1)
    res = await adv.consult("a", AdvisorRunner(), make_infra())
    assert res.verdict == AdvisorVerdict("uncertain", "advisor failed: model down")
    assert res.advisor_output.error == "model down"
    assert (res.used, adv.remaining()) == (1, 0)


async def test_an_advisor_the_budget_refuses_is_uncertain(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=0))
    res = await Advisor(advisor(reply="{}"), 1).consult("a", AdvisorRunner(), infra)
    assert res.verdict == AdvisorVerdict("uncertain", "advisor failed: budget skipped: agent limit reached: 0/0")
    assert is_budget_skipped(res.advisor_output)


async def test_the_prompt_and_no_tools_no_state(make_infra):
    infra = make_infra()
    res = await Advisor(advisor(echo=True), 1).consult("tests fail twice in a row", AdvisorRunner(), infra)
    seen = json.loads(res.verdict.text)
    assert seen["tools"] == []  # the advisor's spec lists "shell", but an advisor gets no tools
    assert seen["task"] == """You are an advisor. The executor remains in control of the loop.

Return exactly one verdict as JSON:
```json
{
  "verdict": "continue|plan|correction|stop|uncertain",
  "rationale": "text when verdict is continue",
  "guidance": "text when verdict is plan or correction",
  "reason": "text when verdict is stop or uncertain"
}
```

Evidence:
tests fail twice in a row"""
    assert "agent.advisor.answer" not in infra.state


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="advisor must be an AgentSpec"):
        Advisor("a", 1)  # type: ignore[arg-type]
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="Advisor max_uses must be an int >= 0"):
            Advisor(advisor(), bad)  # type: ignore[arg-type]


def test_serde_forms():
    assert AdvisorVerdict("plan", "g").to_dict() == {"plan": {"guidance": "g"}}
    assert AdvisorVerdict("continue", "r").to_dict() == {"continue": {"rationale": "r"}}
    d = AdvisorResult(AdvisorVerdict("stop", "why"), AgentOutput("advisor", "x"), 1, 2).to_dict()
    assert list(d) == ["verdict", "advisor_output", "used", "max_uses"]
    assert d["verdict"] == {"stop": {"reason": "why"}}
