"""SpawnSubtask: the main agent spawns ephemeral sub-agents, each with a subset of its own tools.

Port of car-multi 0.21+ ``patterns/spawn_subtask.rs`` (spec 4.5 and
newer-patterns A.5): the ``spawn_subtask`` tool, its schema (the ``tools`` items
are an enum of the parent's tools, so asking for more is rejected before
execution), the defaults and the one level of delegation are the crate's; names
and error strings follow the spec's recommendations (mirroring ``Delegator``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from .. import tracing
from .._validate import int_at_least
from ..errors import ToolError
from ..executors.base import AgentJob
from ..lifecycle import conclude, reserve, run_load_bearing, run_one
from ..runner import check_runner
from ..types import AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner
    from ..runtime import ToolExecutor

__all__ = ["DEFAULT_SUBAGENT_MAX_TURNS", "DEFAULT_SUBAGENT_PROMPT", "SPAWN_SUBTASK_TOOL", "SpawnSubtask",
           "SpawnSubtaskResult", "SpawnSubtaskTool", "SubtaskRecord", "spawn_subtask_schema"]

#: The tool's name; never granted to a sub-agent, so delegation is one level deep.
SPAWN_SUBTASK_TOOL = S.SPAWN_SUBTASK_TOOL
#: A sub-agent's system prompt unless ``SpawnSubtask(subagent_prompt=...)`` says otherwise.
DEFAULT_SUBAGENT_PROMPT = S.DEFAULT_SUBAGENT_PROMPT
#: A sub-agent's ``max_turns`` unless ``SpawnSubtask(subagent_max_turns=...)`` says otherwise.
DEFAULT_SUBAGENT_MAX_TURNS = S.DEFAULT_SUBAGENT_MAX_TURNS


def spawn_subtask_schema(parent_tools: Sequence[str]) -> dict[str, Any]:
    """JSON Schema of the ``spawn_subtask`` parameters for a parent holding ``parent_tools``.

    ``{"task": str (required), "tools": [one of parent_tools, ...] (optional, default [])}``.
    With no parent tools the enum is empty, so any non-empty ``tools`` is rejected.
    """
    granted = [t for t in dict.fromkeys(parent_tools) if t != SPAWN_SUBTASK_TOOL]
    return {
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "The single, self-contained task for the sub-agent"},
            "tools": {"type": "array", "items": {"type": "string", "enum": granted},
                      "description": "Tools the sub-agent may use (a subset of yours; default none)"},
        },
        "required": ["task"],
    }


@dataclass
class SubtaskRecord:
    """One spawned sub-agent.

    Attributes:
        name: The sub-agent's name, ``{main}.sub{n}`` (n from 1, in spawn order).
        task: What it was asked.
        tools: The tools it was granted.
        result: Its answer, or ``sub-agent '{name}' failed: {error}``.
        success: Whether it answered.
    """

    name: str
    task: str
    tools: list[str]
    result: str
    success: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "tools": list(self.tools), "result": self.result,
                "success": self.success}


@dataclass
class SpawnSubtaskResult:
    """Result of :meth:`SpawnSubtask.run`.

    Attributes:
        task: The task.
        final_answer: The main agent's answer.
        subtasks: One record per spawned sub-agent, in spawn order.
    """

    task: str
    final_answer: str
    subtasks: list[SubtaskRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "final_answer": self.final_answer, "subtasks": [s.to_dict() for s in self.subtasks]}


class SpawnSubtaskTool:
    """The :class:`~carmulti.ToolExecutor` of the main agent: ``spawn_subtask`` (and its other tools).

    Runs in the coordinator (a process executor proxies the main agent's calls
    to it); each sub-agent runs through the coordination's executor again.

    ``spawn_subtask(task, tools=[])``:

    * ``task`` must be a str (``ToolError: spawn_subtask requires 'task' parameter``);
      ``tools`` a list of str (``ToolError: spawn_subtask 'tools' must be a list
      of tool names``), each one the parent holds (re-checked here after the
      schema: ``ToolError: tools not granted: a, b``).
    * The sub-agent ``AgentSpec("{main}.sub{n}", subagent_prompt, tools=<those>,
      max_turns=subagent_max_turns)`` is budget-gated, then runs on ``task``
      with only those tools registered (no state write).
    * The tool result is its answer; a failed or refused sub-agent is a
      *successful* tool result ``sub-agent '{name}' failed: {error}`` (the main
      agent reads the failure; its proposal goes on), as ``delegate`` does.

    Any other tool the parent holds goes to ``tool_executor`` when there is one
    (else ``ToolError: unknown tool: {tool}``).

    Attributes:
        records: The :class:`SubtaskRecord` of each spawn, in spawn order
            (filled in when the sub-agent finishes).
    """

    #: Calls a journaled coordination records and a replayed main agent issues again (``carmulti.durable``).
    replayed_tools = frozenset({SPAWN_SUBTASK_TOOL})

    def __init__(self, main: AgentSpec, granted: Sequence[str], runner: "AgentRunner", infra: "SharedInfra", *,
                 subagent_prompt: str = DEFAULT_SUBAGENT_PROMPT,
                 subagent_max_turns: int = DEFAULT_SUBAGENT_MAX_TURNS,
                 tool_executor: "ToolExecutor | None" = None) -> None:
        self.main = main
        self.granted = [t for t in dict.fromkeys(granted) if t != SPAWN_SUBTASK_TOOL]
        self.runner = runner
        self.infra = infra
        self.subagent_prompt = subagent_prompt
        self.subagent_max_turns = subagent_max_turns
        self.tool_executor = tool_executor
        self.records: list[SubtaskRecord] = []

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        """Run one tool call of the main agent.

        Raises:
            ToolError: an unknown tool, or a malformed ``spawn_subtask`` call (see the class docstring).
        """
        if tool != SPAWN_SUBTASK_TOOL:
            if self.tool_executor is not None and tool in self.granted:
                return await self.tool_executor.execute(tool, params)
            raise ToolError(S.UNKNOWN_TOOL.format(tool=tool))
        task = params.get("task")
        if not isinstance(task, str):
            raise ToolError(S.NEED_TASK)
        tools = params.get("tools", [])
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise ToolError(S.NEED_TOOL_LIST)
        refused = [t for t in dict.fromkeys(tools) if t not in self.granted]
        if refused:
            raise ToolError(S.TOOLS_NOT_GRANTED.format(tools=", ".join(refused)))
        tools = list(dict.fromkeys(tools))
        name = S.SUBAGENT_NAME.format(main=self.main.name, n=len(self.records) + 1)
        record = SubtaskRecord(name, task, tools, "", False)
        self.records.append(record)  # spawn order, before any await
        out = reserve(self.infra, name)  # a budget-skipped output when refused
        if out is None:
            spec = AgentSpec(name, self.subagent_prompt, tools=tools, max_turns=self.subagent_max_turns)
            run = await run_one(self.infra, self.runner, AgentJob(spec, task, tool_executor=self.tool_executor))
            out = conclude(self.infra, run, name, write_state=False)
        if out.succeeded:
            record.result, record.success = out.answer, True
        else:
            record.result = S.SUBAGENT_FAILED.format(name=name, err=out.error)
        return record.result


class SpawnSubtask:
    """A main agent that splits its work into sub-agents it spawns on the fly.

    The main agent's runtime gets its tools (``main.tools`` minus
    ``spawn_subtask``: the *granted* tools) and the ``spawn_subtask`` tool (the
    spec its runner receives lists ``spawn_subtask`` after the granted tools, so
    an LLM runner offers it to the model), whose schema (:func:`spawn_subtask_schema`) is validated before execution:
    a call asking for a tool the parent does not hold is rejected. Each call
    runs one sub-agent (see :class:`SpawnSubtaskTool`); several ``spawn_subtask``
    calls of one proposal run concurrently when the runtime runs them side by
    side (tool calls that do not abort the proposal, e.g.
    ``FailureBehavior.SKIP``, as the LLM runners issue them; see
    :class:`~carmulti.Runtime`). A sub-agent never gets ``spawn_subtask``: one
    level of delegation.

    Args:
        main: The main agent (load-bearing).
        subagent_prompt: Sub-agents' system prompt.
        subagent_max_turns: Sub-agents' ``max_turns`` (an int >= 1).
        tool_executor: Runs the granted tools (other than ``spawn_subtask``) of
            the main agent and of the sub-agents, in the coordinator (this
            port's addition: the main agent's runtime holds the spawning
            executor, so a runner's own tool executor is not installed on it).
            ``None``: the main agent's other tool calls fail with
            ``unknown tool: {tool}`` and sub-agents get the runner's executor.

    Raises:
        TypeError: ``main`` is not an ``AgentSpec`` or ``subagent_prompt`` not a str.
        ValueError: ``subagent_max_turns`` is not an int >= 1.
    """

    def __init__(self, main: AgentSpec, subagent_prompt: str = DEFAULT_SUBAGENT_PROMPT,
                 subagent_max_turns: int = DEFAULT_SUBAGENT_MAX_TURNS, *,
                 tool_executor: "ToolExecutor | None" = None) -> None:
        if not isinstance(main, AgentSpec):
            raise TypeError(f"SpawnSubtask main must be an AgentSpec, got {type(main).__name__}")
        if not isinstance(subagent_prompt, str):
            raise TypeError(f"SpawnSubtask subagent_prompt must be a str, got {type(subagent_prompt).__name__}")
        if tool_executor is not None and not callable(getattr(tool_executor, "execute", None)):
            raise TypeError(f"SpawnSubtask tool_executor must have an async execute(tool, params) method, "
                            f"got {type(tool_executor).__name__}")
        self.main = main
        self.subagent_prompt = subagent_prompt
        self.subagent_max_turns = int_at_least(subagent_max_turns, 1, "SpawnSubtask subagent_max_turns")
        self.tool_executor = tool_executor

    @property
    def granted(self) -> list[str]:
        """The tools sub-agents may ask for: ``main.tools`` without ``spawn_subtask``."""
        return [t for t in dict.fromkeys(self.main.tools) if t != SPAWN_SUBTASK_TOOL]

    @tracing.workflow("spawn_subtask")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> SpawnSubtaskResult:
        """Run the main agent (sub-agents run inside its ``spawn_subtask`` calls).

        Returns:
            The :class:`SpawnSubtaskResult`: the main agent's answer and a record per sub-agent.

        Raises:
            AgentFailed: the main agent failed (``partial`` holds the sub-agents so far).
            BudgetExhausted: the budget (or the turn ceiling) refused the main agent.
        """
        check_runner(runner)
        granted = self.granted
        tool = SpawnSubtaskTool(self.main, granted, runner, infra, subagent_prompt=self.subagent_prompt,
                                subagent_max_turns=self.subagent_max_turns, tool_executor=self.tool_executor)
        result = SpawnSubtaskResult(task, "", tool.records)
        tools: dict[str, Any] = {t: None for t in granted}
        tools[SPAWN_SUBTASK_TOOL] = spawn_subtask_schema(granted)
        main = self.main.with_tools([*granted, SPAWN_SUBTASK_TOOL])
        job = AgentJob(main, task, tools=tools, tool_executor=tool)
        out = await run_load_bearing(infra, runner, job, partial=result)
        result.final_answer = out.answer
        return result

