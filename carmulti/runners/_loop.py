"""The agent turn loop of the LLM runners, written once: model call -> tool calls -> ``runtime.execute`` -> repeat.

:func:`run_turns` owns what both runners do the same way: the budget check
before every model call after the first (``runtime.budget`` plus the agent's
own spend), token accounting and pricing, ``turns``/``tool_calls``/``tools_used``,
the stop at ``spec.max_turns``, the error outputs (``budget exhausted before
turn {k}``, ``max turns ({n}) reached without a final answer``, a model error
after earlier spend), and running one turn's tool calls as one
:class:`~carmulti.ActionProposal` (:func:`execute_calls`).

A runner supplies a :class:`TurnBackend` for one agent run: how to call its
model on the conversation so far, how to count a response's tokens, how to
read the answer and the tool calls from a response, and how to feed the tool
results back into the conversation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence, TypeVar

from ..runtime import Action, ActionProposal, FailureBehavior, Runtime
from ..types import AgentOutput, AgentSpec, TokenAccounting
from ._common import LLMRunnerError, budget_exhausted, cost_usd, tool_result_text

__all__ = ["Reply", "ToolCall", "TurnBackend", "execute_calls", "run_turns"]

R = TypeVar("R")


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model asked for, in the backend-neutral form the loop executes.

    Attributes:
        id: Action id; unique among the calls of one turn.
        name: Tool name.
        arguments: The arguments object, or None when it did not parse.
        error: Why the arguments did not parse (the model is shown ``error: <error>``).
    """

    id: str
    name: str
    arguments: dict[str, object] | None
    error: str | None = None


@dataclass(frozen=True)
class Reply:
    """What the loop needs from one model response.

    Attributes:
        text: The reply as the model wrote it (the answer when there are no calls).
        calls: The tool calls it asked for, in order (empty: ``text`` is the final answer).
        answer: The text beside the calls; kept as the answer if a later turn is
            cut off by the budget.
    """

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    answer: str = ""


class TurnBackend(Protocol[R]):
    """One agent run's conversation with one model; ``R`` is the backend's raw response."""

    #: At the last allowed turn, a reply with tool calls *and* text beside them ends
    #: with that text as the answer; otherwise (False) with the max-turns error.
    answer_beside_calls_is_final: bool

    async def complete(self, turn: int, last: bool) -> R:
        """Make model call number ``turn`` (from 1) on the conversation so far.

        ``last`` is True for the last allowed call when there were earlier ones:
        the backend asks the model for a final answer. Raises
        :class:`~carmulti.runners.LLMRunnerError` when the call fails.
        """
        ...

    def usage(self, response: R) -> tuple[int, int]:
        """(prompt, completion) tokens of ``response``."""
        ...

    def reply(self, response: R, turn: int) -> Reply:
        """Read the answer and tool calls of ``response`` (call ids unique within the turn).

        A reply with tool calls is recorded as the assistant's turn of the
        conversation (the results follow with :meth:`feed_back`).

        May raise :class:`~carmulti.runners.LLMRunnerError` (a malformed response):
        the agent then fails with it.
        """
        ...

    def feed_back(self, calls: Sequence[ToolCall], results: Sequence[str]) -> None:
        """Add the result text of each call (same order) to the conversation."""
        ...


async def execute_calls(spec: AgentSpec, runtime: Runtime | None, calls: Sequence[ToolCall],
                        turn: int) -> list[str]:
    """Run one turn's calls as one proposal (``{spec.name}-turn{turn}``); the result text of each call, in order.

    Calls whose arguments did not parse are not run (``error: ...``); the
    others are ``tool_call`` actions with ``FailureBehavior.SKIP``, so one
    failing tool does not stop the rest.
    """
    texts: dict[str, str] = {}
    actions: list[Action] = []
    for c in calls:
        if c.arguments is None:
            texts[c.id] = f"error: {c.error}"
        else:
            actions.append(Action.tool_call(c.id, c.name, c.arguments, failure_behavior=FailureBehavior.SKIP))
    if actions:
        if runtime is None:
            for a in actions:
                texts[a.id] = "error: no runtime to execute tools"
        else:
            result = await runtime.execute(ActionProposal(f"{spec.name}-turn{turn}", spec.name, actions))
            for r in result.results:
                texts[r.action_id] = tool_result_text(r)
    return [texts.get(c.id, "error: not executed") for c in calls]


async def run_turns(backend: TurnBackend[R], spec: AgentSpec, runtime: Runtime | None,
                    price_per_1k: tuple[float, float], t0: float) -> AgentOutput:
    """Run one agent to a final answer: at most ``spec.max_turns`` model calls (at least one).

    Args:
        backend: The agent's conversation with its model.
        spec: The agent.
        runtime: Its runtime (tools run through ``runtime.execute``; its ``budget`` is checked), or None.
        price_per_1k: ``(input, output)`` USD per 1000 tokens, for ``tokens.cost_usd``.
        t0: ``time.perf_counter()`` when the agent started (for ``duration_ms``).

    Raises:
        LLMRunnerError: the first model call failed (no spend to record), or
            :meth:`TurnBackend.reply` refused a response. A model call failing
            after earlier spend instead returns an output with that error and
            the tokens spent, so the budget still meters them.
    """
    max_turns = max(1, spec.max_turns)
    tok = TokenAccounting()
    turns = tool_calls = 0
    tools_used: list[str] = []
    last_text = ""
    budget = getattr(runtime, "budget", None)

    def output(answer: str = "", error: str | None = None) -> AgentOutput:
        tok.cost_usd = cost_usd(tok.input_tokens, tok.output_tokens, price_per_1k)
        return AgentOutput(name=spec.name, answer=answer, turns=turns, tool_calls=tool_calls, tools_used=tools_used,
                           duration_ms=(time.perf_counter() - t0) * 1000.0, error=error, tokens=tok)

    for k in range(1, max_turns + 1):
        tok.cost_usd = cost_usd(tok.input_tokens, tok.output_tokens, price_per_1k)
        if k > 1 and budget_exhausted(budget, tok):
            return output(last_text) if last_text else output(error=f"budget exhausted before turn {k}")
        try:
            response = await backend.complete(k, k == max_turns and k > 1)
        except LLMRunnerError as exc:
            if tok.total_tokens == 0:
                raise
            return output(error=str(exc))  # keep the spend of earlier turns metered
        turns += 1
        input_tokens, output_tokens = backend.usage(response)
        tok.input_tokens += input_tokens
        tok.output_tokens += output_tokens
        reply = backend.reply(response, k)
        if not reply.calls:
            return output(reply.text)
        if k == max_turns:  # no turn left to show the model the results: do not execute them
            if reply.answer and backend.answer_beside_calls_is_final:
                return output(reply.answer)
            return output(reply.text, error=f"max turns ({max_turns}) reached without a final answer")
        last_text = reply.answer or last_text
        results = await execute_calls(spec, runtime, reply.calls, k)
        tool_calls += len(reply.calls)
        for c in reply.calls:
            if c.name not in tools_used:
                tools_used.append(c.name)
        backend.feed_back(reply.calls, results)
    return output(last_text, error=f"max turns ({max_turns}) reached without a final answer")  # pragma: no cover
