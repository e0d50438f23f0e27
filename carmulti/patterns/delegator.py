"""Delegator: a main agent hands subtasks to named specialists through a ``delegate`` tool.

Port of car-multi ``patterns/delegator.rs``: the main agent's runtime gets the
``delegate`` tool (parameters ``specialist`` and ``subtask``); each call runs
the specialist (budget-gated, through the infra's executor) and returns its
answer as the tool result. Failures, unknown names and budget denials are
reported to the main agent as *successful* tool results carrying the failure
text, and recorded in ``delegations``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .. import _strings as S
from .. import tracing
from ..errors import ToolError
from ..executors.base import AgentJob
from ..lifecycle import conclude, reserve, run_load_bearing, run_one
from ..runner import check_runner
from ..types import AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["DELEGATE_SCHEMA", "DelegationRecord", "Delegator", "DelegateTool", "DelegatorResult"]

#: JSON Schema of the ``delegate`` tool's parameters (offered to models).
DELEGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "specialist": {"type": "string", "description": "Name of the specialist to hand the subtask to"},
        "subtask": {"type": "string", "description": "What the specialist should do"},
    },
    "required": ["specialist", "subtask"],
}


@dataclass
class DelegationRecord:
    """One ``delegate`` call: who got what, and what came back."""

    specialist: str
    subtask: str
    result: str
    success: bool

    def to_dict(self) -> dict[str, Any]:
        return {"specialist": self.specialist, "subtask": self.subtask, "result": self.result, "success": self.success}


@dataclass
class DelegatorResult:
    """Result of :meth:`Delegator.run`: the main agent's answer and the delegations in completion order."""

    task: str
    final_answer: str
    delegations: list[DelegationRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "final_answer": self.final_answer, "delegations": [d.to_dict() for d in self.delegations]}


class DelegateTool:
    """The :class:`~carmulti.ToolExecutor` behind the ``delegate`` tool: runs specialists (in the coordinator).

    Each call is budget-gated; the specialist runs through the coordination's
    executor again (so on a process executor it runs in a worker too).
    """

    #: Calls a journaled coordination records and a replayed main agent issues again (``carmulti.durable``).
    replayed_tools = frozenset({S.DELEGATE_TOOL})

    def __init__(self, specialists: Mapping[str, AgentSpec], runner: "AgentRunner", infra: "SharedInfra") -> None:
        self.specialists = dict(specialists)
        self.runner = runner
        self.infra = infra
        self.delegations: list[DelegationRecord] = []
        self._lock = asyncio.Lock()

    async def _record(self, specialist: str, subtask: str, result: str, success: bool) -> None:
        async with self._lock:
            self.delegations.append(DelegationRecord(specialist, subtask, result, success))

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        """Run one ``delegate`` call.

        Raises:
            ToolError: ``tool`` is not ``delegate`` (``unknown tool: {tool}``), or
                ``specialist``/``subtask`` is missing or not a string.
        """
        if tool != S.DELEGATE_TOOL:
            raise ToolError(S.UNKNOWN_TOOL.format(tool=tool))
        name = params.get("specialist")
        if not isinstance(name, str):
            raise ToolError(S.NEED_SPECIALIST)
        subtask = params.get("subtask")
        if not isinstance(subtask, str):
            raise ToolError(S.NEED_SUBTASK)
        spec = self.specialists.get(name)
        if spec is None:
            msg = S.UNKNOWN_SPECIALIST.format(name=name, available=", ".join(sorted(self.specialists)))
            await self._record(name, subtask, msg, False)
            return msg
        out = reserve(self.infra, name)  # a budget-skipped output when refused
        if out is None:
            run = await run_one(self.infra, self.runner, AgentJob(spec, subtask))
            out = conclude(self.infra, run, name, write_state=False)
        if out.succeeded:
            await self._record(name, subtask, out.answer, True)
            return out.answer
        msg = S.SPECIALIST_FAILED.format(name=name, err=out.error)
        await self._record(name, subtask, msg, False)
        return msg


class Delegator:
    """A main agent that delegates to fixed, named specialists via the ``delegate`` tool.

    Args:
        main: The main agent. Its runtime has ``delegate`` registered first,
            then ``main.tools``; the delegating executor is installed on it.
        specialists: Name → specialist spec (the name is what the main agent passes).
    """

    def __init__(self, main: AgentSpec, specialists: Mapping[str, AgentSpec]) -> None:
        for k, v in specialists.items():
            if not isinstance(v, AgentSpec):
                raise TypeError(f"Delegator specialists[{k!r}] must be an AgentSpec, got {type(v).__name__}")
        self.main = main
        self.specialists = dict(specialists)

    @tracing.workflow("delegator")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> DelegatorResult:
        """Run the main agent (specialists run inside its ``delegate`` calls).

        Raises:
            AgentFailed: the main agent failed (``partial`` holds the delegations so far).
            BudgetExhausted: the budget denied the main agent.
        """
        check_runner(runner)
        tool = DelegateTool(self.specialists, runner, infra)
        result = DelegatorResult(task, "", tool.delegations)
        job = AgentJob(self.main, task, tools={S.DELEGATE_TOOL: DELEGATE_SCHEMA}, validate_job_tools=False,
                       tool_executor=tool)
        out = await run_load_bearing(infra, runner, job, partial=result)
        result.final_answer = out.answer
        return result
