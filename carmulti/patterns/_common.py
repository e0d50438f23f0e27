"""Plumbing shared by every pattern, written once: failed and skipped outputs,
the budget gate, committing a successful agent (overlay merge, spend record,
``agent.{name}.answer`` state write) and running a load-bearing agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _strings as S
from ..budget import budget_skipped_output
from ..errors import AgentFailed, BudgetError, BudgetExhausted
from ..executors.base import AgentJob, AgentRun
from ..types import AgentOutput, AgentSpec, TokenAccounting

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["commit", "failed_output", "gate", "invalid_output_reason", "run_finalizer", "run_load_bearing", "settle",
           "workspace_failed_output"]


def failed_output(name: str, error: str, duration_ms: float = 0.0) -> AgentOutput:
    """The output of an agent that did not produce an answer (answer ``""``, zero counts)."""
    return AgentOutput(name=name, error=error, duration_ms=duration_ms)


def workspace_failed_output(name: str, err: BaseException | str) -> AgentOutput:
    """``error = "workspace provisioning failed: {err}"``; no budget slot was used."""
    return failed_output(name, S.WORKSPACE_FAILED.format(err=err))


def gate(infra: "SharedInfra", name: str) -> AgentOutput | None:
    """Reserve a budget slot for ``name``; on denial return its budget-skipped output."""
    try:
        infra.begin_agent()
    except BudgetError as err:
        return budget_skipped_output(name, err)
    return None


def invalid_output_reason(output: AgentOutput) -> str | None:
    """Why a runner's output cannot be committed (wrong field types, negative spend), or None."""
    if not isinstance(output.name, str) or not output.name:
        return f"name must be a non-empty str, got {output.name!r}"
    if not isinstance(output.answer, str):
        return f"answer must be a str, got {type(output.answer).__name__}"
    t = output.tokens
    if t is not None:
        if not isinstance(t, TokenAccounting):
            return f"tokens must be a TokenAccounting or None, got {type(t).__name__}"
        if not (t.input_tokens >= 0 and t.output_tokens >= 0 and t.cost_usd >= 0):
            return (f"reported spend must be non-negative, got input_tokens={t.input_tokens} "
                    f"output_tokens={t.output_tokens} cost_usd={t.cost_usd}")
    return None


def commit(infra: "SharedInfra", output: AgentOutput, run: AgentRun | None = None, *, write_state: bool = True,
           spec_name: str | None = None) -> AgentOutput:
    """Publish a successful agent: merge its overlay, record its spend, write ``agent.{name}.answer``.

    The state key uses the name the *runner returned* (``output.name``), writer
    ``swarm.{name}`` (Rust ``patterns/swarm.rs``). An output that cannot be
    committed (see :func:`invalid_output_reason`) becomes this agent's failure
    (``invalid output from runner: ...``) with nothing merged or recorded, so one
    bad runner result never takes the siblings' outputs down with it.
    """
    reason = invalid_output_reason(output)
    if reason is not None:
        if run is not None:
            run.discard()
        name = spec_name or (output.name if isinstance(output.name, str) and output.name else "?")
        return failed_output(name, f"invalid output from runner: {reason}", float(output.duration_ms or 0.0))
    if run is not None:
        run.merge()
    infra.record_output(output)
    if write_state:
        infra.state.set(S.STATE_KEY.format(name=output.name), output.answer, S.STATE_WRITER.format(name=output.name))
    return output


def settle(infra: "SharedInfra", run: AgentRun, name: str, *, keep_duration: bool = False,
           write_state: bool = True) -> AgentOutput:
    """Turn an :class:`AgentRun` into the agent's output, committing it on success.

    Args:
        name: The spec's name (failures are reported under it).
        keep_duration: Failed output carries the measured duration (sequential
            mode) instead of ``0.0`` (parallel mode), as in Rust.
    """
    if run.output is not None and run.error is None:
        return commit(infra, run.output, run, write_state=write_state, spec_name=name)
    run.discard()
    return failed_output(name, run.error or "internal: missing join result", run.duration_ms if keep_duration else 0.0)


async def run_load_bearing(infra: "SharedInfra", runner: "AgentRunner", spec: AgentSpec, task: str, *,
                           partial: Any = None, tools: bool = True) -> AgentOutput:
    """Run an agent the pattern cannot do without (supervisor, reducer, main agent).

    Raises:
        BudgetExhausted: the budget denied it (``partial`` attached).
        AgentFailed: it failed (``partial`` attached).
    """
    try:
        infra.begin_agent()
    except BudgetError as err:
        raise BudgetExhausted(str(err)).with_partial(partial) from err
    run = await infra.executor.run_agent(runner, AgentJob(spec, task, register_spec_tools=tools), infra)
    if run.output is None or run.error is not None:
        raise AgentFailed(spec.name, run.error or "internal: missing join result").with_partial(partial)
    reason = invalid_output_reason(run.output)
    if reason is not None:
        raise AgentFailed(spec.name, f"invalid output from runner: {reason}").with_partial(partial)
    infra.record_output(run.output)
    return run.output


async def run_finalizer(infra: "SharedInfra", runner: "AgentRunner", spec: AgentSpec, task: str) -> AgentOutput | None:
    """Run an optional finalizer (synthesizer): ``None`` when denied by the budget or failed."""
    try:
        infra.begin_agent()
    except BudgetError:
        return None
    run = await infra.executor.run_agent(runner, AgentJob(spec, task, register_spec_tools=False), infra)
    if run.output is None or run.error is not None or invalid_output_reason(run.output) is not None:
        return None
    infra.record_output(run.output)
    return run.output
