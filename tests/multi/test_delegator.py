"""Delegator: the Rust test_delegator_basic plus the five delegate strings, call-order records,
budget gating and main-agent failures."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from carmulti import (
    Action,
    ActionProposal,
    ActionType,
    AgentFailed,
    AgentOutput,
    AgentSpec,
    BudgetExhausted,
    BudgetLimits,
    DelegationRecord,
    Delegator,
    DelegatorResult,
    SharedInfra,
)
from carmulti.patterns import DelegateTool

from .doubles import SimpleRunner


class DelegatingRunner:
    """The main agent (``metadata["calls"]``: a list of ``[tool, params]``) issues each call as
    its own one-action proposal through ``runtime.execute``, in order, and answers with a JSON
    list of ``[status, output, error]``. Specialists answer ``"{name} did: {task}"`` or raise
    ``metadata["raise"]``."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        md = spec.metadata
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if "calls" not in md:
            return AgentOutput(name=spec.name, answer=f"{spec.name} did: {task}", turns=1)
        results = []
        for i, (tool, params) in enumerate(md["calls"]):
            action = Action(id=f"call{i}", action_type=ActionType.TOOL_CALL, tool=tool, parameters=params)
            res = await runtime.execute(ActionProposal(id=f"p{i}", source=spec.name, actions=[action]))
            r = res.results[0]
            results.append([r.status.value, r.output, r.error])
        return AgentOutput(name=spec.name, answer=orjson.dumps(results).decode(), turns=1,
                           tool_calls=len(results))


def lead(calls: list, **md: Any) -> AgentSpec:
    return AgentSpec("lead", "You manage", metadata={"calls": calls, **md})


SPECIALISTS = {
    "researcher": AgentSpec("researcher", "Find information"),
    "writer": AgentSpec("writer", "Write", metadata={"raise": "writer crashed"}),
}


async def test_delegator_basic(make_infra):
    infra = make_infra()
    main = AgentSpec("lead", "You manage the project")
    specialists = {"researcher": AgentSpec("researcher", "Find information")}
    result = await Delegator(main, specialists).run("build a CLI tool", SimpleRunner(), infra)
    assert isinstance(result, DelegatorResult)
    assert result.final_answer
    assert "lead" in result.final_answer
    assert result.final_answer == "lead handled: build a CLI tool"
    assert result.delegations == []


async def test_delegate_results_and_records_in_call_order(make_infra):
    infra = make_infra()
    calls = [
        ["delegate", {"specialist": "researcher", "subtask": "find X"}],
        ["delegate", {"specialist": "ghost", "subtask": "haunt"}],
        ["delegate", {"specialist": "writer", "subtask": "write Y"}],
        ["delegate", {"specialist": "researcher", "subtask": "find Z"}],
    ]
    result = await Delegator(lead(calls), SPECIALISTS).run("T", DelegatingRunner(), infra)
    tool_results = orjson.loads(result.final_answer)
    unknown = "Unknown specialist 'ghost'. Available: researcher, writer"
    failed = "specialist 'writer' failed: writer crashed"
    # Every one of these is a *successful* tool result carrying the text.
    assert tool_results == [
        ["succeeded", "researcher did: find X", None],
        ["succeeded", unknown, None],
        ["succeeded", failed, None],
        ["succeeded", "researcher did: find Z", None],
    ]
    assert result.delegations == [
        DelegationRecord("researcher", "find X", "researcher did: find X", True),
        DelegationRecord("ghost", "haunt", unknown, False),
        DelegationRecord("writer", "write Y", failed, False),
        DelegationRecord("researcher", "find Z", "researcher did: find Z", True),
    ]
    assert result.task == "T"
    # Main + three specialists started (the unknown one never did).
    assert infra.budget.snapshot().agents_started == 4


async def test_delegate_unknown_tool_string(make_infra):
    infra = make_infra()
    main = AgentSpec("lead", metadata={"calls": [["other", {"x": 1}]]}).with_tools(["other"])
    result = await Delegator(main, SPECIALISTS).run("T", DelegatingRunner(), infra)
    assert orjson.loads(result.final_answer) == [["failed", None, "unknown tool: other"]]
    assert result.delegations == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"subtask": "s"}, "delegate requires 'specialist' parameter"),
        ({"specialist": 5, "subtask": "s"}, "delegate requires 'specialist' parameter"),
        ({"specialist": "researcher"}, "delegate requires 'subtask' parameter"),
        ({"specialist": "researcher", "subtask": ["s"]}, "delegate requires 'subtask' parameter"),
    ],
    ids=["missing-specialist", "non-str-specialist", "missing-subtask", "non-str-subtask"],
)
async def test_delegate_parameter_errors_through_runtime(make_infra, params, expected):
    """A malformed ``delegate`` call fails the action with the Rust text (spec 4.4)."""
    infra = make_infra()
    result = await Delegator(lead([["delegate", params]]), SPECIALISTS).run("T", DelegatingRunner(), infra)
    assert orjson.loads(result.final_answer) == [["failed", None, expected]]
    assert result.delegations == []


class TestDelegateToolDirect:
    """The executor's five strings, called directly (no runtime validation in between)."""

    async def test_five_strings(self, infra):
        ex = DelegateTool(SPECIALISTS, DelegatingRunner(), infra)
        from carmulti import ToolError

        with pytest.raises(ToolError, match=r"^unknown tool: search$"):
            await ex.execute("search", {})
        with pytest.raises(ToolError) as e1:
            await ex.execute("delegate", {"subtask": "s"})
        assert str(e1.value) == "delegate requires 'specialist' parameter"
        with pytest.raises(ToolError) as e2:
            await ex.execute("delegate", {"specialist": "researcher", "subtask": 3})
        assert str(e2.value) == "delegate requires 'subtask' parameter"
        assert await ex.execute("delegate", {"specialist": "nobody", "subtask": "s"}) == (
            "Unknown specialist 'nobody'. Available: researcher, writer")
        assert await ex.execute("delegate", {"specialist": "writer", "subtask": "s"}) == (
            "specialist 'writer' failed: writer crashed")
        assert await ex.execute("delegate", {"specialist": "researcher", "subtask": "s"}) == "researcher did: s"
        assert [d.success for d in ex.delegations] == [False, False, True]


async def test_budget_denied_specialist_is_reported_as_failure_string(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    calls = [["delegate", {"specialist": "researcher", "subtask": "a"}],
             ["delegate", {"specialist": "researcher", "subtask": "b"}]]
    result = await Delegator(lead(calls), SPECIALISTS).run("T", DelegatingRunner(), infra)
    first, second = result.delegations
    assert first.success and first.result == "researcher did: a"
    assert second.success is False
    assert second.result.startswith("specialist 'researcher' failed: ")
    assert "agent limit reached: 2/2" in second.result
    tool_results = orjson.loads(result.final_answer)
    assert tool_results[1] == ["succeeded", second.result, None]
    assert infra.budget.snapshot().agents_started == 2


async def test_specialist_spend_is_recorded(make_infra):
    infra = make_infra()

    main = lead([["delegate", {"specialist": "researcher", "subtask": "a"}]])
    result = await Delegator(main, {"researcher": AgentSpec("researcher")}).run("T", TokenDelegatingRunner(), infra)
    assert result.delegations[0].success
    assert infra.budget.snapshot().total_tokens == 2 * 7  # main + specialist


class TokenDelegatingRunner(DelegatingRunner):
    """``DelegatingRunner`` whose every output reports 7 input tokens."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        from carmulti import TokenAccounting

        out = await super().run(spec, task, runtime, mailbox)
        out.tokens = TokenAccounting(7, 0, 0.0)
        return out


async def test_main_agent_failure_raises_agent_failed(make_infra):
    infra = make_infra()
    with pytest.raises(AgentFailed) as ei:
        await Delegator(AgentSpec("lead", metadata={"raise": "main down"}), SPECIALISTS).run(
            "T", DelegatingRunner(), infra)
    assert str(ei.value) == "agent 'lead' failed: main down"
    assert ei.value.name == "lead"


async def test_main_agent_denied_raises_budget_exhausted(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=0))
    with pytest.raises(BudgetExhausted) as ei:
        await Delegator(lead([]), SPECIALISTS).run("T", DelegatingRunner(), infra)
    assert str(ei.value) == "coordination budget exhausted: agent limit reached: 0/0"


async def test_main_runtime_has_delegate_tool_registered_first():
    """Inspects the runtime handed to the main agent: local executor only."""
    seen: dict[str, Any] = {}

    class Probe:
        async def run(self, spec, task, runtime, mailbox):
            seen["tools"] = list(runtime.tools)
            return "done"

    async with SharedInfra() as infra:
        result = await Delegator(AgentSpec("lead").with_tools(["search"]), SPECIALISTS).run("T", Probe(), infra)
    assert seen["tools"] == ["delegate", "search"]
    assert result.final_answer == "done"


def test_delegator_rejects_non_spec_specialists():
    with pytest.raises(TypeError):
        Delegator(AgentSpec("lead"), {"x": "not a spec"})  # type: ignore[dict-item]


def test_delegation_record_to_dict():
    assert DelegationRecord("s", "t", "r", True).to_dict() == {
        "specialist": "s", "subtask": "t", "result": "r", "success": True}
