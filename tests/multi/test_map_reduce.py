"""MapReduce: one mapper per item ({mapper}_{i}), bounded concurrency, one reducer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from carmulti import (
    AgentFailed,
    AgentOutput,
    AgentSpec,
    BudgetExhausted,
    BudgetLimits,
    MapReduce,
    MapReduceResult,
    SharedInfra,
    is_budget_skipped,
)

from .doubles import MetaRunner


class MapRunner:
    """Mappers echo their task, except an item ``bad`` raises; the reducer echoes its task unless
    its metadata says ``raise``. Mappers report ``metadata["tokens"]`` input tokens if given."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        from carmulti import TokenAccounting

        md = spec.metadata
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if task.endswith("Item:\nbad"):
            raise RuntimeError(f"{spec.name} cannot map bad")
        tok = TokenAccounting(md["tokens"], 0, 0.0) if "tokens" in md else None
        return AgentOutput(name=spec.name, answer=task, turns=1, tokens=tok)


MAPPER = AgentSpec("m", "map it")
REDUCER = AgentSpec("r", "reduce it")


async def test_mapper_naming_tasks_and_reducer_task(make_infra):
    infra = make_infra()
    result = await MapReduce(MAPPER, REDUCER).run("T", ["a", "b", "c"], MapRunner(), infra)
    assert isinstance(result, MapReduceResult)
    assert result.task == "T"
    assert [o.name for o in result.map_outputs] == ["m_0", "m_1", "m_2"]
    assert [o.answer for o in result.map_outputs] == ["T\n\nItem:\na", "T\n\nItem:\nb", "T\n\nItem:\nc"]
    assert result.all_succeeded
    assert result.reduced_answer == (
        "T\n\nMapper outputs:\n"
        "- m_0: T\n\nItem:\na\n"
        "- m_1: T\n\nItem:\nb\n"
        "- m_2: T\n\nItem:\nc"
    )
    assert infra.state.get("agent.m_1.answer") == "T\n\nItem:\nb"
    assert infra.budget.snapshot().agents_started == 4


async def test_map_outputs_in_item_order_regardless_of_completion(make_infra):
    infra = make_infra()
    # The runner uses the item to decide the sleep: earlier items finish later.
    result = await MapReduce(AgentSpec("m", metadata={"answer": "x"}), AgentSpec("r", metadata={"answer": "R"}),
                             max_concurrent=4).run("T", ["3", "2", "1", "0"], SleepByItemRunner(), infra)
    assert [o.name for o in result.map_outputs] == ["m_0", "m_1", "m_2", "m_3"]
    assert [o.answer for o in result.map_outputs] == ["3", "2", "1", "0"]
    assert result.reduced_answer == "R"


class SleepByItemRunner:
    """Mapper sleeps ``item * 0.04`` s and answers the item; others answer ``metadata["answer"]``."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        if "Item:\n" in task:
            item = task.rsplit("\n", 1)[-1]
            await asyncio.sleep(int(item) * 0.04)
            return AgentOutput(name=spec.name, answer=item, turns=1)
        return AgentOutput(name=spec.name, answer=spec.metadata.get("answer", task), turns=1)


async def test_failed_mapper_kept_in_outputs_and_left_out_of_reducer(make_infra):
    infra = make_infra()
    result = await MapReduce(MAPPER, REDUCER).run("T", ["a", "bad", "c"], MapRunner(), infra)
    assert [o.succeeded for o in result.map_outputs] == [True, False, True]
    assert result.map_outputs[1].error == "m_1 cannot map bad"
    assert result.map_outputs[1].name == "m_1"
    assert not result.all_succeeded
    assert "m_1" not in result.reduced_answer
    assert result.reduced_answer == "T\n\nMapper outputs:\n- m_0: T\n\nItem:\na\n- m_2: T\n\nItem:\nc"


async def test_empty_items_runs_no_agent(make_infra):
    infra = make_infra()
    result = await MapReduce(MAPPER, REDUCER).run("T", [], MapRunner(), infra)
    assert result.map_outputs == []
    assert result.reduced_answer == ""
    assert result.all_succeeded
    assert infra.budget.snapshot().agents_started == 0
    assert infra.state.keys() == []


async def test_reducer_failure_raises_agent_failed_with_partial(make_infra):
    infra = make_infra()
    reducer = AgentSpec("r", metadata={"raise": "reduce broke"})
    with pytest.raises(AgentFailed) as ei:
        await MapReduce(MAPPER, reducer).run("T", ["a", "b"], MapRunner(), infra)
    assert str(ei.value) == "agent 'r' failed: reduce broke"
    partial = ei.value.partial
    assert isinstance(partial, MapReduceResult)
    assert [o.name for o in partial.map_outputs] == ["m_0", "m_1"]
    assert partial.reduced_answer == ""


async def test_reducer_denied_raises_budget_exhausted(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    with pytest.raises(BudgetExhausted) as ei:
        await MapReduce(MAPPER, REDUCER).run("T", ["a", "b"], MapRunner(), infra)
    assert str(ei.value) == "coordination budget exhausted: agent limit reached: 2/2"
    assert [o.succeeded for o in ei.value.partial.map_outputs] == [True, True]


async def test_mappers_are_budget_gated(make_infra):
    infra = make_infra(budget=BudgetLimits(max_total_tokens=150))
    mapper = AgentSpec("m", metadata={"tokens": 100})
    with pytest.raises(BudgetExhausted) as ei:
        await MapReduce(mapper, REDUCER, max_concurrent=1).run("T", ["a", "b", "c"], MapRunner(), infra)
    outs = ei.value.partial.map_outputs
    assert [o.succeeded for o in outs] == [True, True, False]
    assert is_budget_skipped(outs[2]) and outs[2].name == "m_2"
    assert str(ei.value).startswith("coordination budget exhausted: budget exhausted: ")


async def test_non_str_item_raises_type_error_and_runs_nothing(make_infra):
    infra = make_infra()
    with pytest.raises(TypeError, match=r"items\[1\]"):
        await MapReduce(MAPPER, REDUCER).run("T", ["a", 2, "c"], MapRunner(), infra)  # type: ignore[list-item]
    assert infra.budget.snapshot().agents_started == 0


async def test_isolated_mappers_merge_their_writes(make_infra):
    infra = make_infra()
    mapper = AgentSpec("m", metadata={"write": {"mapped": True}, "answer": "ok"})
    result = await MapReduce(mapper, AgentSpec("r", metadata={"answer": "R"})).with_isolation().run(
        "T", ["a"], MetaRunner(), infra)
    assert result.reduced_answer == "R"
    assert infra.state.get("mapped") is True


def test_constructor_validation():
    with pytest.raises(ValueError):
        MapReduce(MAPPER, REDUCER, max_concurrent=0)
    with pytest.raises(TypeError):
        MapReduce("m", REDUCER)  # type: ignore[arg-type]
    assert MapReduce(MAPPER, REDUCER).max_concurrent == 5
    assert MapReduce(MAPPER, REDUCER).with_max_concurrent(2).max_concurrent == 2


class ConcurrencyTracker:
    """Tracks how many mappers run at once (runner-side state: local executor only)."""

    def __init__(self) -> None:
        self.current = 0
        self.max_seen = 0
        self.calls = 0

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        self.calls += 1
        if "Item:" not in task:
            return AgentOutput(name=spec.name, answer="reduced", turns=1)
        self.current += 1
        self.max_seen = max(self.max_seen, self.current)
        try:
            await asyncio.sleep(0.02)
        finally:
            self.current -= 1
        return AgentOutput(name=spec.name, answer="m", turns=1)


@pytest.mark.parametrize("limit", [1, 3])
async def test_max_concurrent_respected_local_only(limit):
    tracker = ConcurrencyTracker()
    async with SharedInfra() as infra:
        result = await MapReduce(MAPPER, REDUCER, max_concurrent=limit).run(
            "T", [str(i) for i in range(10)], tracker, infra)
    assert tracker.max_seen == limit
    assert tracker.calls == 11  # 10 mappers + 1 reducer
    assert len(result.map_outputs) == 10 and result.all_succeeded


@pytest.mark.parametrize("name, task, item, i", [("m", "t", "x", 0), ("a{b}", "{task} {}", "{item}", 12345), ("é", "", "", 7)])
def test_mapper_heads_and_swarm_sections_reproduce_the_templates(name: str, task: str, item: str, i: int) -> None:
    from carmulti import _strings as S

    # both map paths (all at once, streamed) name and task their mappers by concatenation, not format calls
    assert S.mapper_name_head(name) + str(i) == S.MAPPER_NAME.format(name=name, i=i)
    assert S.mapper_task_head(task) + item == S.MAPPER_TASK.format(task=task, item=item)
    # the swarm's summary by concatenation too
    outs = [AgentOutput(name, item), AgentOutput(task, "{answer}"), AgentOutput(str(i), "")]
    assert S.sections(outs) == "\n\n".join(S.SECTION.format(name=o.name, answer=o.answer) for o in outs)
    assert S.sections([]) == ""
    # the sequential swarm's findings (and the other FINDING_LINE users) likewise
    assert S.finding_line(name, item) == S.FINDING_LINE.format(name=name, answer=item)
    assert S.prior_findings(task, item) == S.PRIOR_FINDINGS.format(task=task, lines=item)
    # a tournament's judge prompt (its template has escaped braces)
    assert S.judge_task(task, name, item, str(i), "{}") == S.JUDGE_TASK.format(
        task=task, name_a=name, answer_a=item, name_b=str(i), answer_b="{}")


def test_a_template_filled_by_concatenation_must_have_exactly_its_fields_in_order() -> None:
    from carmulti import _strings as S

    assert S._literals("{{a}}{x} and {y}{{}}", "x", "y") == ("{a}", " and ", "{}")
    for template, fields in (("{y}{x}", ("x", "y")), ("{x}", ("x", "y")), ("{x!r}", ("x",)), ("{x:>4}", ("x",))):
        with pytest.raises(AssertionError, match="expected plain"):
            S._literals(template, *fields)
