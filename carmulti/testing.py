"""Deterministic runners for users' tests (no model, no network).

* :class:`EchoRunner` answers from a template (``"{name}: {task}"``), optionally
  reporting a fixed token spend and sleeping a fixed latency.
* :class:`ScriptedRunner` replays scripted steps per agent and fails loudly on an
  unexpected call (:class:`UnexpectedAgentCall`) or, at
  :meth:`ScriptedRunner.assert_consumed`, on steps never used
  (:class:`UnconsumedSteps`) -- like openai-agents' ``ScriptedModel``.
* :class:`FunctionRunner` wraps a plain ``async def`` as a runner.

All are picklable with dill, so they run on the process executor too; there
each worker runs its own copy, so what a runner *records* (``EchoRunner.calls``,
``ScriptedRunner.calls``, ``remaining()``, ``assert_consumed()``) only reflects
calls made in the process that holds it: use them with the in-process executor,
and a ``Mapping`` script (per agent name) when agents may land in different workers.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Union

from .types import AgentOutput, AgentSpec, TokenAccounting

__all__ = ["EchoRunner", "FunctionRunner", "ScriptedRunner", "Step", "UnconsumedSteps", "UnexpectedAgentCall"]

#: One scripted step: an answer, a full output, an exception to raise, or a
#: callable ``(spec, task) -> answer``.
Step = Union[str, AgentOutput, BaseException, Callable[[AgentSpec, str], str]]


class UnexpectedAgentCall(AssertionError):
    """A :class:`ScriptedRunner` was called for an agent with no step left."""


class UnconsumedSteps(AssertionError):
    """A :class:`ScriptedRunner` still holds steps the code under test never used."""


class EchoRunner:
    """Answers ``template.format(name=spec.name, task=task)``.

    Args:
        template: Answer template; fields ``name`` and ``task``.
        tokens: ``(input_tokens, output_tokens, cost_usd)`` reported per call, or ``None``.
        latency_s: Seconds to ``asyncio.sleep`` before answering (simulated model latency).

    Attributes:
        calls: ``(agent name, task)`` per call, in call order (in-process only).
    """

    def __init__(self, template: str = "{name}: {task}", *, tokens: tuple[int, int, float] | None = None,
                 latency_s: float = 0.0) -> None:
        self.template = template
        self.tokens = tokens
        self.latency_s = latency_s
        self.calls: list[tuple[str, str]] = []

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        t0 = time.perf_counter()
        self.calls.append((spec.name, task))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        tok = None if self.tokens is None else TokenAccounting(*self.tokens)
        return AgentOutput(name=spec.name, answer=self.template.format(name=spec.name, task=task), turns=1,
                           duration_ms=(time.perf_counter() - t0) * 1000.0, tokens=tok)


class ScriptedRunner:
    """Replays scripted steps.

    Args:
        script: Agent name → its steps, consumed one per call in order; or a
            flat iterable of steps consumed by whichever agent calls next.

    Raises (from ``run``):
        UnexpectedAgentCall: no step left for that agent.
        BaseException: a scripted exception step (fails that agent).
    """

    def __init__(self, script: Mapping[str, Iterable[Step]] | Iterable[Step]) -> None:
        self._by_name: dict[str, collections.deque[Step]] | None
        self._flat: collections.deque[Step] | None
        if isinstance(script, Mapping):
            self._by_name = {k: collections.deque(v) for k, v in script.items()}
            self._flat = None
        else:
            self._by_name = None
            self._flat = collections.deque(script)
        self.calls: list[tuple[str, str]] = []

    def _next(self, name: str) -> Step:
        q = self._flat if self._by_name is None else self._by_name.get(name)
        if not q:
            raise UnexpectedAgentCall(f"ScriptedRunner: no scripted step left for agent {name!r}")
        return q.popleft()

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        self.calls.append((spec.name, task))
        step = self._next(spec.name)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, AgentOutput):
            return step
        answer = step(spec, task) if callable(step) else step
        return AgentOutput(name=spec.name, answer=answer, turns=1, duration_ms=0.0)

    def remaining(self) -> int:
        """Steps not yet used."""
        if self._by_name is None:
            return len(self._flat or ())
        return sum(len(q) for q in self._by_name.values())

    def assert_consumed(self) -> None:
        """Raise :class:`UnconsumedSteps` if any scripted step was never used."""
        left = self.remaining()
        if left:
            detail = "" if self._by_name is None else ": " + ", ".join(
                f"{k}={len(q)}" for k, q in self._by_name.items() if q)
            raise UnconsumedSteps(f"ScriptedRunner: {left} scripted step(s) never used{detail}")


class FunctionRunner:
    """Adapts ``async def fn(spec, task, runtime, mailbox) -> AgentOutput | str`` to a runner."""

    def __init__(self, fn: Callable[[AgentSpec, str, Any, Any], Awaitable[AgentOutput | str]]) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionRunner takes an async callable, got {type(fn).__name__}")
        self.fn = fn

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput | str:
        return await self.fn(spec, task, runtime, mailbox)
