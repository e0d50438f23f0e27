"""Pipeline: a sequential swarm (task enrichment, budget gating, failures do not stop the chain)."""

from __future__ import annotations

from carmulti import AgentSpec, BudgetLimits, Pipeline, PipelineResult, is_budget_skipped
from carmulti.testing import EchoRunner

from .doubles import MetaRunner, MockRunner, spec


async def test_pipeline_stages_run_in_order_and_feed_forward(make_infra):
    infra = make_infra()
    stages = [spec("draft", answer="D"), spec("edit", answer="E"), spec("publish")]  # publish echoes
    result = await Pipeline(stages).run("T", MetaRunner(), infra)
    assert isinstance(result, PipelineResult)
    assert result.task == "T"
    assert [s.name for s in result.stages] == ["draft", "edit", "publish"]
    assert result.all_succeeded
    assert result.final_answer == "T\n\nPrior agents' findings:\n- draft: D\n- edit: E"
    assert result.final_answer == result.stages[-1].answer
    assert infra.state.get("agent.edit.answer") == "E"


async def test_pipeline_with_mock_runner(make_infra):
    infra = make_infra()
    result = await Pipeline([AgentSpec("s1"), AgentSpec("s2")]).run("pipe task", MockRunner(), infra)
    assert result.stages[0].answer == "answer from s1 for: pipe task"
    assert "Prior agents" in result.stages[1].answer
    assert result.final_answer == result.stages[1].answer


async def test_pipeline_final_answer_empty_when_last_stage_failed(make_infra):
    infra = make_infra()
    stages = [spec("a", answer="A"), spec("b", **{"raise": "last broke"})]
    result = await Pipeline(stages).run("T", MetaRunner(), infra)
    assert result.final_answer == ""
    assert not result.all_succeeded
    assert result.stages[1].error == "last broke"
    assert result.stages[0].succeeded


async def test_pipeline_failed_middle_stage_does_not_stop_chain(make_infra):
    infra = make_infra()
    stages = [spec("a", answer="A"), spec("b", **{"raise": "mid"}), spec("c")]
    result = await Pipeline(stages).run("T", MetaRunner(), infra)
    assert [s.succeeded for s in result.stages] == [True, False, True]
    assert result.final_answer == "T\n\nPrior agents' findings:\n- a: A"
    assert not result.all_succeeded


async def test_pipeline_stages_are_budget_gated(make_infra):
    infra = make_infra(budget=BudgetLimits(max_total_tokens=150))
    stages = [spec(n, answer=n.upper(), tokens=[100, 0, 0.0]) for n in ("a", "b", "c")]
    result = await Pipeline(stages).run("T", MetaRunner(), infra)
    assert [s.succeeded for s in result.stages] == [True, True, False]
    assert is_budget_skipped(result.stages[2])
    assert result.final_answer == ""
    assert infra.budget.snapshot().total_tokens == 200


async def test_pipeline_empty(make_infra):
    infra = make_infra()
    result = await Pipeline([]).run("T", EchoRunner("{task}"), infra)
    assert result.stages == [] and result.final_answer == "" and result.all_succeeded


def test_pipeline_result_to_dict_uses_rust_field_names():
    from carmulti import AgentOutput

    r = PipelineResult("T", [AgentOutput("a", "x")], "x")
    d = r.to_dict()
    assert set(d) == {"task", "stages", "final_answer"}
    assert d["stages"][0]["name"] == "a"
