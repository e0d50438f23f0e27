"""Supervisor: parallel workers, a reviewing supervisor, feedback rounds until APPROVED."""

from __future__ import annotations

from typing import Any

import pytest

from carmulti import (
    AgentFailed,
    AgentOutput,
    AgentSpec,
    BudgetExhausted,
    BudgetLimits,
    MultiError,
    Supervisor,
    SupervisorResult,
)

from .doubles import MetaRunner


class ReviewRunner:
    """Workers echo their task. The supervisor ``boss`` approves once workers got feedback
    (``approve_round`` in its metadata: 1 = approve at once, 2 = after one feedback round,
    0 = never); a supervisor with ``raise`` in its metadata fails."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        md = spec.metadata
        if md.get("role") != "supervisor":
            if "raise" in md:
                raise RuntimeError(md["raise"])
            return AgentOutput(name=spec.name, answer=task, turns=1)
        if "raise" in md:
            raise RuntimeError(md["raise"])
        approve = md.get("approve_round", 2)
        had_feedback = "Supervisor feedback:" in task
        if approve == 1 or (approve == 2 and had_feedback):
            return AgentOutput(name=spec.name, answer="Looks good. APPROVED", turns=1)
        return AgentOutput(name=spec.name, answer="needs more detail", turns=1)


def boss(**md: Any) -> AgentSpec:
    return AgentSpec("boss", "You review", metadata={"role": "supervisor", **md})


async def test_supervisor_approves_in_round_two_with_feedback_task(make_infra):
    infra = make_infra()
    workers = [AgentSpec("w1"), AgentSpec("w2")]
    result = await Supervisor(workers, boss(approve_round=2)).run("T", ReviewRunner(), infra)
    assert isinstance(result, SupervisorResult)
    assert result.approved
    assert result.total_rounds == 2 and len(result.rounds) == 2
    assert result.supervisor_feedback == ["needs more detail", "Looks good. APPROVED"]
    assert [o.answer for o in result.rounds[0]] == ["T", "T"]
    feedback_task = "T\n\nSupervisor feedback:\nneeds more detail"
    assert [o.answer for o in result.rounds[1]] == [feedback_task, feedback_task]
    # final_answer is the last round's combined worker answers.
    assert result.final_answer == f"## w1\n{feedback_task}\n\n## w2\n{feedback_task}"


async def test_supervisor_approves_in_first_round(make_infra):
    infra = make_infra()
    result = await Supervisor([AgentSpec("w1")], boss(approve_round=1)).run("T", ReviewRunner(), infra)
    assert result.approved and result.total_rounds == 1
    assert result.final_answer == "T"  # one worker: its answer verbatim
    assert result.supervisor_feedback == ["Looks good. APPROVED"]


async def test_supervisor_not_approved_after_max_rounds_returns_normally(make_infra):
    infra = make_infra()
    result = await Supervisor([AgentSpec("w1")], boss(approve_round=0), max_rounds=3).run("T", ReviewRunner(), infra)
    assert result.approved is False
    assert result.total_rounds == 3
    assert result.supervisor_feedback == ["needs more detail"] * 3
    assert infra.budget.snapshot().agents_started == 6  # 3 worker runs + 3 reviews


async def test_supervisor_approval_is_case_sensitive(make_infra):
    infra = make_infra()
    sup = AgentSpec("boss", metadata={"answer": "approved, looks fine"})
    result = await Supervisor([AgentSpec("w1", metadata={"answer": "x"})], sup, max_rounds=2).run(
        "T", MetaRunner(), infra)
    assert not result.approved and result.total_rounds == 2


async def test_supervisor_review_task_contains_task_and_worker_answers(make_infra):
    infra = make_infra()
    workers = [AgentSpec("w1", metadata={"answer": "first"}), AgentSpec("w2", metadata={"answer": "second"}),
               AgentSpec("w3", metadata={"raise": "x"})]
    sup = AgentSpec("boss")  # MetaRunner echoes the review task
    result = await Supervisor(workers, sup, max_rounds=1).run("THE TASK", MetaRunner(), infra)
    review = result.supervisor_feedback[0]
    assert review.startswith("THE TASK")
    assert "- w1: first\n- w2: second" in review
    assert "w3" not in review  # failed workers are not reviewed


async def test_supervisor_failure_raises_agent_failed_with_partial(make_infra):
    infra = make_infra()
    with pytest.raises(AgentFailed) as ei:
        await Supervisor([AgentSpec("w1")], boss(**{"raise": "reviewer down"})).run("T", ReviewRunner(), infra)
    err = ei.value
    assert str(err) == "agent 'boss' failed: reviewer down"
    assert isinstance(err, MultiError)
    assert isinstance(err.partial, SupervisorResult)
    assert len(err.partial.rounds) == 1 and err.partial.rounds[0][0].answer == "T"
    assert err.partial.approved is False


async def test_supervisor_denied_by_budget_raises_budget_exhausted(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=1))
    with pytest.raises(BudgetExhausted) as ei:
        await Supervisor([AgentSpec("w1")], boss()).run("T", ReviewRunner(), infra)
    assert str(ei.value) == "coordination budget exhausted: agent limit reached: 1/1"
    assert isinstance(ei.value.partial, SupervisorResult)
    assert len(ei.value.partial.rounds) == 1


async def test_worker_failures_are_outputs_not_exceptions(make_infra):
    infra = make_infra()
    workers = [AgentSpec("w1", metadata={"raise": "worker broke"}), AgentSpec("w2")]
    result = await Supervisor(workers, boss(approve_round=1)).run("T", ReviewRunner(), infra)
    assert result.rounds[0][0].error == "worker broke"
    assert result.rounds[0][1].succeeded
    assert result.approved


def test_supervisor_rejects_zero_rounds():
    with pytest.raises(ValueError):
        Supervisor([AgentSpec("w")], AgentSpec("s"), max_rounds=0)


def test_with_max_rounds():
    s = Supervisor([AgentSpec("w")], AgentSpec("s")).with_max_rounds(7)
    assert s.max_rounds == 7
    assert Supervisor([AgentSpec("w")], AgentSpec("s")).max_rounds == 3
