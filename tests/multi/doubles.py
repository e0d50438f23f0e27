"""Test doubles shared by the carmulti tests.

Every runner here is a module-level class whose behaviour is driven only by the
spec (name, system prompt, metadata) and the task, so it can be pickled with
dill and run in a worker process: tests must never assert on state a runner
mutates on ``self``. The ported Rust doubles (``MockRunner``, ``TokenRunner``,
``WorkspaceProbeRunner``, ``ToolRunner``/``CountingExecutor``,
``SimpleRunner``) keep their Rust answers.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from carmulti import (
    Action,
    ActionProposal,
    ActionType,
    AgentOutput,
    AgentSpec,
    TaskScope,
    TokenAccounting,
    truncate,
)


def prefix50(task: str) -> str:
    """Rust ``&task[..task.len().min(50)]`` (byte slice; our tasks are ASCII)."""
    return truncate(task, 50)


# -- ports of the Rust test doubles ------------------------------------------------------------


class MockRunner:
    """Rust swarm.rs ``MockRunner``: ``answer from {name} for: {first 50 bytes of task}``."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        return AgentOutput(name=spec.name, answer=f"answer from {spec.name} for: {prefix50(task)}", turns=1,
                           tool_calls=0, duration_ms=10.0)


class TokenRunner:
    """Rust ``TokenRunner(per_call_total)``: reports ``per_call_total`` input tokens per call."""

    def __init__(self, per_call_total: int) -> None:
        self.per_call_total = per_call_total

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        return AgentOutput(name=spec.name, answer=f"answer from {spec.name}", turns=1, duration_ms=1.0,
                           tokens=TokenAccounting(self.per_call_total, 0, 0.0))


class WorkspaceProbeRunner:
    """Rust ``WorkspaceProbeRunner``: checks ``metadata["workspace"]`` is an existing directory
    during the run. Instead of recording the path on ``self`` it answers with it."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        path = spec.metadata.get("workspace")
        if not isinstance(path, str):
            raise RuntimeError(f"no workspace metadata for {spec.name}: {spec.metadata!r}")
        if not os.path.isdir(path):
            raise RuntimeError(f"workspace {path} is not a directory during the run")
        probe = os.path.join(path, "probe.txt")
        with open(probe, "w") as f:  # an agent may write into its own workspace
            f.write(spec.name)
        files = sorted(os.listdir(path))
        return AgentOutput(name=spec.name, answer=path, turns=1, duration_ms=1.0,
                           outcome={"files": files})


class CountingExecutor:
    """Rust ``CountingExecutor``: counts calls, returns ``{"tool": tool, "echo": params.payload}``.

    ``hits`` is a one-element list so a test can share a counter with it (local executor only).
    """

    def __init__(self, hits: list[int] | None = None) -> None:
        self.hits = hits if hits is not None else [0]

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.hits[0] += 1
        return {"tool": tool, "echo": params.get("payload")}


class ToolRunner:
    """Rust ``ToolRunner``: installs a ``CountingExecutor``, runs one ``echo`` tool call with
    ``payload = "ping-{name}"`` through ``runtime.execute`` and answers with the echo."""

    def __init__(self, hits: list[int] | None = None) -> None:
        self.hits = hits

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        runtime.set_executor(CountingExecutor(self.hits))
        action = Action(id=f"act-{spec.name}", action_type=ActionType.TOOL_CALL, tool="echo",
                        parameters={"payload": f"ping-{spec.name}"})
        result = await runtime.execute(ActionProposal(id=f"p-{spec.name}", source="test", actions=[action]))
        if not result.all_succeeded:
            raise RuntimeError(f"tool-call proposal must succeed: {result.results[0].error}")
        echoed = (result.results[0].output or {}).get("echo") or ""
        return AgentOutput(name=spec.name, answer=echoed, turns=1, tool_calls=1, duration_ms=1.0,
                           tools_used=["echo"])


class SimpleRunner:
    """Rust delegator.rs ``SimpleRunner``: ``{name} handled: {first 50 bytes of task}``."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        return AgentOutput(name=spec.name, answer=f"{spec.name} handled: {prefix50(task)}", turns=1,
                           duration_ms=5.0)


# -- a configurable runner driven by spec.metadata --------------------------------------------


def spec(name: str, system_prompt: str = "", **md: Any) -> AgentSpec:
    """``AgentSpec(name, system_prompt, metadata=md)``."""
    return AgentSpec(name, system_prompt, metadata=md)


class MetaRunner:
    """Behaviour chosen per agent by ``spec.metadata`` (process-safe), applied in this order:

    * ``sleep``: seconds to ``asyncio.sleep`` first;
    * ``write``: ``{key: value}`` written through ``runtime.execute`` (state_write actions);
    * ``read``: a key read through ``runtime.execute`` (state_read) *after* ``sleep2``;
    * ``sleep2``: seconds to sleep between ``write`` and ``read``;
    * ``raise``: raise ``RuntimeError(raise)``;
    * ``return``: return this raw value (a ``str`` or a wrong type);
    * answer: ``answer`` if given; ``"@read"`` = the value read; ``"@scope"`` =
      ``TaskScope.agent_name()``; ``"@prompt"`` = the system prompt; ``"@prompt_task"`` =
      ``"{system_prompt}||{task}"``; default: the task text (echo);
    * ``tokens``: ``[input, output, cost]`` reported;
    * ``report_name``: the name reported in the output (default ``spec.name``).
    """

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        md = spec.metadata
        if md.get("sleep"):
            await asyncio.sleep(md["sleep"])
        if "write" in md:
            actions = [Action.state_write(f"w{i}", k, v) for i, (k, v) in enumerate(md["write"].items())]
            res = await runtime.execute(ActionProposal(id=f"write-{spec.name}", source=spec.name, actions=actions))
            if not res.all_succeeded:
                raise RuntimeError(f"write failed: {[r.error for r in res.results]}")
        if md.get("sleep2"):
            await asyncio.sleep(md["sleep2"])
        read_value: Any = None
        if "read" in md:
            res = await runtime.execute(ActionProposal(id=f"read-{spec.name}", source=spec.name,
                                                       actions=[Action.state_read("r", md["read"])]))
            read_value = res.results[0].output
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if "return" in md:
            return md["return"]
        answer = md.get("answer", task)
        if answer == "@read":
            answer = str(read_value)
        elif answer == "@scope":
            answer = str(TaskScope.agent_name())
        elif answer == "@prompt":
            answer = spec.system_prompt
        elif answer == "@prompt_task":
            answer = f"{spec.system_prompt}||{task}"
        tokens = TokenAccounting(*md["tokens"]) if "tokens" in md else None
        return AgentOutput(name=md.get("report_name", spec.name), answer=answer, turns=1, duration_ms=1.0, tokens=tokens)
