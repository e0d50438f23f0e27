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
from ..errors import AgentFailed, BudgetError, BudgetExhausted, ToolError
from ..executors.base import AgentJob
from ..mailbox import Mailbox
from ..runner import check_runner
from ..types import AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["DELEGATE_SCHEMA", "DelegationRecord", "Delegator", "DelegatorResult", "DelegatingExecutor"]

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


class DelegatingExecutor:
    """The ``ToolExecutor`` behind the ``delegate`` tool (runs in the coordinator)."""

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
        infra = self.infra
        try:
            infra.begin_agent()
        except BudgetError as err:
            msg = S.SPECIALIST_FAILED.format(name=name, err=f"budget skipped: {err}")
            await self._record(name, subtask, msg, False)
            return msg
        run = await infra.executor.run_agent(self.runner, AgentJob(spec, subtask, mailbox=Mailbox()), infra)
        if run.output is not None:
            infra.record_output(run.output)  # spent, even by a specialist that reported a failure
        if run.output is not None and run.error is None:
            await self._record(name, subtask, run.output.answer, True)
            return run.output.answer
        msg = S.SPECIALIST_FAILED.format(name=name, err=run.error)
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

    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> DelegatorResult:
        """Run the main agent (specialists run inside its ``delegate`` calls).

        Raises:
            AgentFailed: the main agent failed (``partial`` holds the delegations so far).
            BudgetExhausted: the budget denied the main agent.
        """
        check_runner(runner)
        executor = DelegatingExecutor(self.specialists, runner, infra)
        result = DelegatorResult(task, "", executor.delegations)
        try:
            infra.begin_agent()
        except BudgetError as err:
            raise BudgetExhausted(str(err)).with_partial(result) from err
        job = AgentJob(self.main, task, tools={S.DELEGATE_TOOL: DELEGATE_SCHEMA}, validate_job_tools=False,
                       tool_executor=executor, mailbox=Mailbox())
        run = await infra.executor.run_agent(runner, job, infra)
        if run.output is not None:
            infra.record_output(run.output)
        if run.output is None or run.error is not None:
            raise AgentFailed(self.main.name, run.error or "internal: missing join result").with_partial(result)
        result.final_answer = run.output.answer
        return result

