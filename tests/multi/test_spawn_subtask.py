"""SpawnSubtask: the ``spawn_subtask`` tool and its schema (a subset of the parent's tools, one level
of delegation), sub-agents with only the tools they asked for, budget-gated spawns, spawns of one
proposal side by side, records, main-agent failures; on every executor."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from carmulti import (
    DEFAULT_SUBAGENT_PROMPT,
    SPAWN_SUBTASK_TOOL,
    Action,
    ActionProposal,
    AgentFailed,
    AgentOutput,
    AgentSpec,
    BudgetExhausted,
    BudgetLimits,
    FailureBehavior,
    SpawnSubtask,
    SpawnSubtaskResult,
    SubtaskRecord,
    ToolError,
)
from carmulti.patterns import SpawnSubtaskTool, spawn_subtask_schema


class SpawnRunner:
    """The main agent (no ``.sub`` in its name) runs ``metadata["proposals"]``: each a list of
    ``[tool, params]`` calls issued as one proposal (``metadata["behavior"]``, default ``skip``), and
    answers with a JSON list per proposal of ``[status, output, error]``; ``metadata["schema"]``: it
    answers with the ``spawn_subtask`` schema registered on its runtime; ``metadata["raise"]``: it fails.

    A sub-agent acts on its task: ``fail`` raises; ``inspect`` answers with its system prompt, max_turns,
    spec tools and runtime tools; ``use {tool}``: calls that tool (parameter ``{"x": 1}``) and answers
    ``{status}: {output or error}``; else ``done: {task}``.
    """

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if ".sub" not in spec.name:
            return await self._main(spec, runtime)
        if task == "fail":
            raise RuntimeError("sub-agent crashed")
        if task == "inspect":
            return orjson.dumps({"prompt": spec.system_prompt, "max_turns": spec.max_turns, "tools": spec.tools,
                                 "runtime_tools": sorted(runtime.tools)}).decode()
        if task.startswith("use "):
            tool = task.split()[1]
            res = await runtime.execute(ActionProposal("use", spec.name, [Action.tool_call("u", tool, {"x": 1})]))
            r = res.results[0]
            return f"{r.status.value}: {r.output if r.succeeded else r.error}"
        return f"done: {task}"

    async def _main(self, spec: AgentSpec, runtime: Any) -> Any:
        md = spec.metadata
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if md.get("schema"):
            return orjson.dumps({"tools": spec.tools, "schema": runtime.tools[SPAWN_SUBTASK_TOOL]}).decode()
        behavior = FailureBehavior(md.get("behavior", "skip"))
        out = []
        for p, calls in enumerate(md.get("proposals", [])):
            actions = [Action.tool_call(f"c{i}", tool, params, failure_behavior=behavior)
                       for i, (tool, params) in enumerate(calls)]
            res = await runtime.execute(ActionProposal(f"p{p}", spec.name, actions))
            out.append([[r.status.value, r.output, r.error] for r in res.results])
        return AgentOutput(spec.name, orjson.dumps(out).decode(), turns=1, tool_calls=sum(map(len, out)))


def main(*proposals: list, tools: tuple[str, ...] = ("fetch", "write"), **md: Any) -> AgentSpec:
    return AgentSpec("main", "You split work.", tools=list(tools), metadata={"proposals": list(proposals), **md})


def spawn(task: str, tools: list[str] | None = None) -> list:
    return [SPAWN_SUBTASK_TOOL, {"task": task} if tools is None else {"task": task, "tools": tools}]


async def test_a_sub_agent_gets_only_the_tools_it_asked_for(make_infra):
    infra = make_infra()
    res = await SpawnSubtask(main([spawn("inspect", ["fetch"])])).run("T", SpawnRunner(), infra)
    assert isinstance(res, SpawnSubtaskResult) and res.task == "T"
    [[status, output, error]] = orjson.loads(res.final_answer)[0]
    assert (status, error) == ("succeeded", None)
    assert orjson.loads(output) == {"prompt": DEFAULT_SUBAGENT_PROMPT, "max_turns": 10, "tools": ["fetch"],
                                    "runtime_tools": ["fetch"]}  # never spawn_subtask, never "write"
    assert res.subtasks == [SubtaskRecord("main.sub1", "inspect", ["fetch"], output, True)]
    assert "agent.main.sub1.answer" not in infra.state
    assert infra.budget.snapshot().agents_started == 2


async def test_prompt_and_max_turns_of_sub_agents(make_infra):
    pattern = SpawnSubtask(main([spawn("inspect")]), subagent_prompt="Be brief.", subagent_max_turns=3)
    res = await pattern.run("T", SpawnRunner(), make_infra())
    seen = orjson.loads(res.subtasks[0].result)
    assert (seen["prompt"], seen["max_turns"], seen["tools"], seen["runtime_tools"]) == ("Be brief.", 3, [], [])


async def test_asking_for_a_tool_the_parent_lacks_is_rejected_before_execution(make_infra):
    infra = make_infra()
    res = await SpawnSubtask(main([spawn("x", ["fetch", "shell"])])).run("T", SpawnRunner(), infra)
    [[status, output, error]] = orjson.loads(res.final_answer)[0]
    assert status == "rejected" and output is None
    assert "tool 'spawn_subtask' parameters rejected: $.tools[1]: 'shell' is not one of ['fetch', 'write']" == error
    assert res.subtasks == [] and infra.budget.snapshot().agents_started == 1


async def test_a_parent_without_tools_can_only_spawn_tool_less_sub_agents(make_infra):
    res = await SpawnSubtask(main([spawn("x", ["fetch"]), spawn("y", [])], tools=())).run(
        "T", SpawnRunner(), make_infra())
    [[s1, _, e1], [s2, o2, _]] = orjson.loads(res.final_answer)[0]
    assert s1 == "rejected" and "is not one of []" in e1
    assert (s2, o2) == ("succeeded", "done: y")


async def test_the_schema_offered_to_the_main_agent(make_infra):
    res = await SpawnSubtask(main(tools=("fetch", SPAWN_SUBTASK_TOOL, "write"), schema=True)).run(
        "T", SpawnRunner(), make_infra())
    seen = orjson.loads(res.final_answer)
    assert seen["tools"] == ["fetch", "write", "spawn_subtask"]  # the runner is told to offer it
    assert seen["schema"] == spawn_subtask_schema(["fetch", "write"])
    assert seen["schema"]["properties"]["tools"]["items"]["enum"] == ["fetch", "write"]
    assert seen["schema"]["required"] == ["task"]


class Rendezvous:
    """The ``meet`` tool (in the coordinator, on every executor): a call returns ``met`` once ``n`` calls
    are waiting together, or fails ``alone`` after ``wait_s`` -- sub-agents run one by one never meet."""

    def __init__(self, n: int, wait_s: float) -> None:
        self.n = n
        self.wait_s = wait_s
        self.arrived = 0
        self.all_in: asyncio.Event | None = None

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        if self.all_in is None:
            self.all_in = asyncio.Event()
        self.arrived += 1
        if self.arrived == self.n:
            self.all_in.set()
        try:
            await asyncio.wait_for(self.all_in.wait(), self.wait_s)
        except asyncio.TimeoutError:
            raise ToolError("alone") from None
        return "met"


async def test_spawns_of_one_proposal_run_side_by_side(make_infra):
    pattern = SpawnSubtask(main([spawn("use meet", ["meet"]) for _ in range(3)], tools=("meet",)),
                           tool_executor=Rendezvous(3, wait_s=10.0))
    res = await pattern.run("T", SpawnRunner(), make_infra())
    assert [o for _, o, _ in orjson.loads(res.final_answer)[0]] == ["succeeded: met"] * 3
    assert [r.name for r in res.subtasks] == ["main.sub1", "main.sub2", "main.sub3"]  # spawn order


async def test_spawns_that_abort_on_failure_run_one_by_one(make_infra):
    pattern = SpawnSubtask(main([spawn("use meet", ["meet"]), spawn("x")], tools=("meet",), behavior="abort"),
                           tool_executor=Rendezvous(2, wait_s=0.5))
    res = await pattern.run("T", SpawnRunner(), make_infra())
    assert [o for _, o, _ in orjson.loads(res.final_answer)[0]] == ["failed: alone", "done: x"]


async def test_each_spawn_is_budget_gated_and_failures_are_tool_results(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=3))
    res = await SpawnSubtask(main([spawn("fail")], [spawn("a")], [spawn("b")])).run("T", SpawnRunner(), infra)
    results = [p[0] for p in orjson.loads(res.final_answer)]
    failed = "sub-agent 'main.sub1' failed: sub-agent crashed"
    refused = "sub-agent 'main.sub3' failed: budget skipped: agent limit reached: 3/3"
    assert results == [["succeeded", failed, None], ["succeeded", "done: a", None], ["succeeded", refused, None]]
    assert res.subtasks == [SubtaskRecord("main.sub1", "fail", [], failed, False),
                            SubtaskRecord("main.sub2", "a", [], "done: a", True),
                            SubtaskRecord("main.sub3", "b", [], refused, False)]


async def test_main_failure_raises_with_the_sub_agents_so_far(make_infra):
    with pytest.raises(AgentFailed) as info:
        await SpawnSubtask(main(**{"raise": "main broke"})).run("T", SpawnRunner(), make_infra())
    assert str(info.value) == "agent 'main' failed: main broke"
    assert info.value.partial == SpawnSubtaskResult("T", "", [])
    with pytest.raises(BudgetExhausted):
        await SpawnSubtask(main()).run("T", SpawnRunner(), make_infra(budget=BudgetLimits(max_agents=0)))


class Fetch:
    """A tool executor for the granted tools; it runs in the coordinator on every executor."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.calls.append((tool, dict(params)))
        return f"{tool} ran"


async def test_a_tool_executor_serves_the_granted_tools_of_main_and_sub_agents(make_infra):
    fetch = Fetch()
    pattern = SpawnSubtask(main([["fetch", {"x": 0}], spawn("use fetch", ["fetch"])]), tool_executor=fetch)
    res = await pattern.run("T", SpawnRunner(), make_infra())
    assert orjson.loads(res.final_answer)[0] == [["succeeded", "fetch ran", None],
                                                 ["succeeded", "succeeded: fetch ran", None]]
    assert fetch.calls == [("fetch", {"x": 0}), ("fetch", {"x": 1})]


async def test_without_a_tool_executor_other_tools_of_main_are_unknown(make_infra):
    res = await SpawnSubtask(main([["fetch", {}]])).run("T", SpawnRunner(), make_infra())
    assert orjson.loads(res.final_answer)[0] == [["failed", None, "unknown tool: fetch"]]


class TestSpawnSubtaskToolDirect:
    """The executor re-checks every call (no runtime validation in between)."""

    async def test_checks_and_strings(self, infra):
        tool = SpawnSubtaskTool(AgentSpec("boss"), ["fetch"], SpawnRunner(), infra)
        with pytest.raises(ToolError, match=r"^unknown tool: fetch$"):
            await tool.execute("fetch", {})  # granted, but no tool executor to run it
        with pytest.raises(ToolError, match=r"^spawn_subtask requires 'task' parameter$"):
            await tool.execute("spawn_subtask", {"tools": []})
        with pytest.raises(ToolError, match=r"^spawn_subtask 'tools' must be a list of tool names$"):
            await tool.execute("spawn_subtask", {"task": "t", "tools": "fetch"})
        with pytest.raises(ToolError, match=r"^tools not granted: shell, spawn_subtask$"):
            await tool.execute("spawn_subtask", {"task": "t", "tools": ["fetch", "shell", "spawn_subtask"]})
        assert tool.records == []
        assert await tool.execute("spawn_subtask", {"task": "go", "tools": ["fetch", "fetch"]}) == "done: go"
        assert tool.records == [SubtaskRecord("boss.sub1", "go", ["fetch"], "done: go", True)]


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="main must be an AgentSpec"):
        SpawnSubtask("main")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subagent_prompt must be a str"):
        SpawnSubtask(main(), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subagent_max_turns must be an int >= 1"):
        SpawnSubtask(main(), subagent_max_turns=0)
    with pytest.raises(TypeError, match="tool_executor must have an async execute"):
        SpawnSubtask(main(), tool_executor=object())  # type: ignore[arg-type]
    assert SpawnSubtask(main(tools=("a", SPAWN_SUBTASK_TOOL, "a"))).granted == ["a"]


def test_to_dict():
    d = SpawnSubtaskResult("T", "F", [SubtaskRecord("m.sub1", "t", ["a"], "r", True)]).to_dict()
    assert d == {"task": "T", "final_answer": "F",
                 "subtasks": [{"name": "m.sub1", "task": "t", "tools": ["a"], "result": "r", "success": True}]}
