"""Plumbing shared by every pattern, written once: failed and skipped outputs,
the budget gate, committing a successful agent (overlay merge, spend record,
``agent.{name}.answer`` state write) and running a load-bearing agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _strings as S
from ..budget import budget_skipped_output
from ..errors import AgentFailed, BudgetError, BudgetExhausted
from ..executors.base import AgentJob, AgentRun
from ..types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["commit", "failed_output", "gate", "run_finalizer", "run_load_bearing", "settle", "workspace_failed_output"]


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


def commit(infra: "SharedInfra", output: AgentOutput, run: AgentRun | None = None, *,
           write_state: bool = True) -> AgentOutput:
    """Publish a successful agent: merge its overlay, record its spend, write ``agent.{name}.answer``.

    The state key uses the name the *runner returned* (``output.name``), writer
    ``swarm.{name}`` (Rust ``patterns/swarm.rs``). The executor has already
    validated ``output`` (``executors.base.check_output``).
    """
    if run is not None:
        run.merge()
    infra.record_output(output)
    if write_state:
        infra.state.set(S.STATE_KEY.format(name=output.name), output.answer, S.STATE_WRITER.format(name=output.name))
    return output


def settle(infra: "SharedInfra", run: AgentRun, name: str, *, keep_duration: bool = False,
           write_state: bool = True) -> AgentOutput:
    """Turn an :class:`AgentRun` into the agent's output, committing it on success.

    A failed run publishes nothing (its overlay is discarded, no state write).
    When the runner itself returned an output with ``error`` set, that output is
    the agent's output, every field kept, and its reported spend is recorded
    (the tokens were spent); otherwise a failure output is built.

    Args:
        name: The spec's name (failures are reported under it).
        keep_duration: Failed output carries the measured duration (sequential
            mode) instead of ``0.0`` (parallel mode), as in Rust.
    """
    if run.error is None and run.output is not None:
        return commit(infra, run.output, run, write_state=write_state)
    run.discard()
    if run.output is not None:  # the runner reported its own failure
        infra.record_output(run.output)
        return run.output
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
    if run.output is not None:
        infra.record_output(run.output)  # spent, even by a runner that then reported a failure
    if run.output is None or run.error is not None:
        raise AgentFailed(spec.name, run.error or "internal: missing join result").with_partial(partial)
    return run.output


async def run_finalizer(infra: "SharedInfra", runner: "AgentRunner", spec: AgentSpec, task: str) -> AgentOutput | None:
    """Run an optional finalizer (synthesizer): ``None`` when denied by the budget or failed."""
    try:
        infra.begin_agent()
    except BudgetError:
        return None
    run = await infra.executor.run_agent(runner, AgentJob(spec, task, register_spec_tools=False), infra)
    if run.output is not None:
        infra.record_output(run.output)
    if run.output is None or run.error is not None:
        return None
    return run.output
