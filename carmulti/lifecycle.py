"""An agent's life cycle in a coordination, written once for every pattern, ``Delegator`` and ``AgentPool``.

reserve a budget slot (:func:`reserve`: the run's turn ceiling, then the
budget; :func:`admit` is the gate itself) → run it on the coordination's executor
(:func:`run_one`, :func:`run_many`) → conclude (:func:`conclude`): on success
merge its isolated overlay, record its spend and write ``agent.{name}.answer``
(:func:`publish`); on failure discard the overlay and build the failure output.
:func:`run_load_bearing` and :func:`run_finalizer` are the two variants the
patterns need for agents they cannot do without, or can. Also owns the outputs
of agents that never ran (:func:`failed_output`, :func:`workspace_failed_output`)
and the mailbox a group of agents shares (:func:`shared_mailbox`). A big round is paced as a whole
(:func:`paced`, re-exported from :mod:`carmulti.executors.gcpace`): the collector's automatic runs
are off from building its jobs to concluding its runs. Every run that comes back,
every refusal and every workspace failure is reported to :mod:`carmulti.progress` while a
progress display runs for the coordination (one empty-dict test per agent otherwise).

This is the only module between the patterns and the executors: patterns never
import an executor's internals or a transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from . import _strings as S
from . import progress
from .budget import budget_skipped_output
from .errors import AgentFailed, BudgetError, BudgetExhausted
from .executors.base import AgentJob, AgentRun, Coordination
from .executors.gcpace import paced
from .mailbox import Mailbox
from .types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from .infra import SharedInfra
    from .runner import AgentRunner

__all__ = ["admit", "conclude", "failed_output", "paced", "publish", "reserve", "run_finalizer", "run_load_bearing",
           "run_many", "run_one", "run_round", "shared_mailbox", "workspace_failed_output"]


def failed_output(name: str, error: str, duration_ms: float = 0.0) -> AgentOutput:
    """The output of an agent that did not produce an answer (answer ``""``, zero counts)."""
    return AgentOutput(name=name, error=error, duration_ms=duration_ms)


def workspace_failed_output(name: str, err: BaseException | str, infra: "SharedInfra | None" = None) -> AgentOutput:
    """``error = "workspace provisioning failed: {err}"``; no budget slot was used.

    ``infra``: the coordination, for its progress display (the agent counts as failed).
    """
    if progress.TRACKED:
        progress.failed(infra)
    return failed_output(name, S.WORKSPACE_FAILED.format(err=err))


def shared_mailbox() -> Mailbox:
    """A mailbox for a group of agents that talk to each other (a swarm's agents share one, as in Rust)."""
    return Mailbox._fresh()


def admit(infra: "SharedInfra") -> None:
    """The one gate before an agent starts: the run's turn ceiling, then a budget slot.

    Raises:
        BudgetError: ``kind="turn_ceiling"`` when the agents recorded so far have
            used ``infra.max_turns`` turns (no budget slot is taken), else what
            ``infra.begin_agent()`` raises (a spend limit or ``max_agents``).
    """
    ceiling = infra.max_turns
    if ceiling is not None and infra.turns_used >= ceiling:
        raise BudgetError("turn_ceiling", max_turns=ceiling, snapshot=infra.budget.snapshot())
    infra.begin_agent()


def reserve(infra: "SharedInfra", name: str) -> AgentOutput | None:
    """Admit agent ``name`` (:func:`admit`): ``None`` if admitted, else its budget-skipped output.

    Refused by the turn ceiling: ``error == f"budget skipped: turn ceiling {N} reached"``.
    """
    try:
        admit(infra)
    except BudgetError as err:
        progress.refused(infra)
        return budget_skipped_output(name, err)
    return None


class _Deadline:
    """The coordination as an executor sees it, with a shorter ``agent_timeout_s`` (see :func:`run_many`)."""

    __slots__ = ("_infra", "agent_timeout_s", "__weakref__")

    def __init__(self, infra: "SharedInfra", timeout_s: float) -> None:
        self._infra = infra
        self.agent_timeout_s = timeout_s

    @property
    def state(self) -> Any:
        return self._infra.state

    @property
    def log(self) -> Any:
        return self._infra.log

    @property
    def policies(self) -> Any:
        return self._infra.policies

    @property
    def budget(self) -> Any:
        return self._infra.budget


def _coordination(infra: "SharedInfra", timeout_s: float | None) -> Any:
    own = infra.agent_timeout_s
    if timeout_s is None or (own is not None and own <= timeout_s):
        return infra
    return _Deadline(infra, timeout_s)


async def run_one(infra: "SharedInfra", runner: "AgentRunner", job: AgentJob, *,
                  timeout_s: float | None = None) -> AgentRun:
    """Run one admitted agent on the coordination's executor.

    On a journaled coordination (``SharedInfra(journal=...)``, see
    :mod:`carmulti.durable`) an agent with a record is replayed instead of run,
    and one that succeeds is recorded before its run is returned.

    Args:
        timeout_s: A bound of the caller's on this run, in seconds (``Fleet``'s
            ``agent_timeout_s``); the shorter of it and ``infra.agent_timeout_s``
            applies, with the executor's own timeout handling (cancel, grace,
            ``timeout after {n}s``).
    """
    coordination = _coordination(infra, timeout_s)
    journal = infra.journal
    if journal is None:
        run = await infra.executor.run_agent(runner, job, coordination)
    else:
        key = journal.key(job)
        rec = journal.take(key)
        if rec is not None:
            run = await journal.replay(job, rec, infra.state)
        else:
            journal.prepare(job)
            run = await infra.executor.run_agent(runner, job, coordination)
            journal.record(key, job, run)
    if progress.TRACKED:
        progress.finished(infra, run)
    return run


async def run_many(infra: "SharedInfra", runner: "AgentRunner", jobs: Sequence[AgentJob], *,
                   timeout_s: float | None = None) -> list[AgentRun]:
    """Run admitted agents concurrently on the coordination's executor; results in job order.

    Journaled: as :func:`run_one`, the recorded ones replayed (in job order),
    the others run as one batch and recorded together.

    Args:
        timeout_s: As for :func:`run_one`, for every job.
    """
    coordination = _coordination(infra, timeout_s)
    journal = infra.journal
    if journal is None:
        return await _dispatch(infra, runner, jobs, coordination)
    keys = [journal.key(job) for job in jobs]  # submission order, before anything runs
    runs: list[AgentRun | None] = [None] * len(jobs)
    todo: list[int] = []
    for i, job in enumerate(jobs):
        rec = journal.take(keys[i])
        if rec is None:
            journal.prepare(job)
            todo.append(i)
        else:
            replayed = runs[i] = await journal.replay(job, rec, infra.state)
            if progress.TRACKED:
                progress.finished(infra, replayed)
    if todo:
        done = await _dispatch(infra, runner, [jobs[i] for i in todo], coordination)
        journal.record_many([journal.entry(keys[i], jobs[i], run) for i, run in zip(todo, done)])
        for i, run in zip(todo, done):
            runs[i] = run
    return runs  # type: ignore[return-value]  # every slot is filled


async def run_round(infra: "SharedInfra", runner: "AgentRunner", jobs: Sequence[AgentJob], *,
                    timeout_s: float | None = None) -> list[AgentOutput]:
    """One parallel round: gate every job in order, run the admitted ones at once, conclude in job order.

    A job the budget refuses gets its budget-skipped output (:func:`reserve`) and does not run; the
    others run as one :func:`run_many` and are concluded (:func:`conclude`, published on success).
    The collector is paced from gating to concluding (:func:`paced`); a caller that builds a big
    list of jobs builds it under ``paced`` too.

    Args:
        timeout_s: As for :func:`run_one`, for every job.

    Returns:
        One output per job, in job order.
    """
    with paced(len(jobs)):
        if infra.max_turns is None and infra.budget.begin_agents(len(jobs)):  # nothing can refuse a job: one reservation
            runs = await run_many(infra, runner, jobs, timeout_s=timeout_s)
            return conclude_round(infra, runs, [job.spec.name for job in jobs])
        slots: list[AgentOutput | int] = []
        admitted: list[AgentJob] = []
        for job in jobs:
            skipped = reserve(infra, job.spec.name)
            if skipped is not None:
                slots.append(skipped)
            else:
                slots.append(len(admitted))
                admitted.append(job)
        runs = await run_many(infra, runner, admitted, timeout_s=timeout_s)
        concluded = iter(conclude_round(infra, runs, [job.spec.name for job in admitted]))
        return [slot if isinstance(slot, AgentOutput) else next(concluded) for slot in slots]


async def _dispatch(infra: "SharedInfra", runner: "AgentRunner", jobs: Sequence[AgentJob],
                    coordination: Coordination) -> list[AgentRun]:
    """``run_batch`` on the executor; in slices while a progress display counts this coordination."""
    counts = progress.TRACKED.get(infra) if progress.TRACKED else None
    if counts is not None:  # dispatched in slices, so the display moves as agents finish
        return await progress.run_batch(counts, lambda part: infra.executor.run_batch(runner, part, coordination), jobs)
    return await infra.executor.run_batch(runner, jobs, coordination)


def publish(infra: "SharedInfra", output: AgentOutput, run: AgentRun | None = None, *,
            write_state: bool = True) -> AgentOutput:
    """Publish a successful agent: merge its overlay, record its spend, write ``agent.{name}.answer``.

    The state key uses the name the *runner returned* (``output.name``), writer
    ``swarm.{name}`` (Rust ``patterns/swarm.rs``). The executor has already
    checked ``output`` (``executors.agent_run.check_output``).
    """
    if run is not None:
        run.merge()
    infra.record_output(output)
    if write_state:
        name = output.name
        infra.state.set(S.state_key(name), output.answer, S.state_writer(name))
    return output


def conclude(infra: "SharedInfra", run: AgentRun, name: str, *, keep_duration: bool = False,
             write_state: bool = True) -> AgentOutput:
    """Turn an :class:`~carmulti.executors.AgentRun` into the agent's output, publishing it on success.

    A failed run publishes nothing (its overlay is discarded, no state write).
    When the runner itself returned an output with ``error`` set, that output is
    the agent's output, every field kept, and its reported spend is recorded
    (the tokens were spent); otherwise a failure output is built.

    Args:
        name: The spec's name (failures are reported under it).
        keep_duration: Failed output carries the measured duration (sequential
            mode) instead of ``0.0`` (parallel mode), as in Rust.
        write_state: Write ``agent.{name}.answer`` on success.
    """
    if run.error is None and run.output is not None:
        return publish(infra, run.output, run, write_state=write_state)
    run.discard()
    if run.output is not None:  # the runner reported its own failure
        infra.record_output(run.output)
        return run.output
    return failed_output(name, run.error or S.MISSING_RESULT, run.duration_ms if keep_duration else 0.0)


def conclude_round(infra: "SharedInfra", runs: Sequence[AgentRun], names: Sequence[str]) -> list[AgentOutput]:
    """:func:`conclude` of every run of a round, in order (``names[i]`` is the spec name of ``runs[i]``).

    The same outputs, spend records and state transitions, in the same order, as
    calling :func:`conclude` on each run in turn; the ``agent.{name}.answer`` writes
    of consecutive successes that need no overlay merge go to the store in one
    ``StateStore.set_many`` (one timestamp). Concluding 100,000 successes, timed
    in one process: 0.77 us an agent against 0.99 us one by one; the dictionary
    inserts into a growing store are most of what remains.
    """
    outputs: list[AgentOutput] = []
    pending: list[AgentOutput] = []  # published successes whose state writes are not made yet
    record = infra.record_output
    try:
        for run, name in zip(runs, names):
            out = run.output
            if out is not None and run.error is None and run.context is None:
                record(out)
                pending.append(out)
                outputs.append(out)
                continue
            if pending:
                _write_answers(infra, pending)
                pending = []
            outputs.append(conclude(infra, run, name))
    finally:  # what was published is written, even when something after it raised
        if pending:
            _write_answers(infra, pending)
    return outputs


def _write_answers(infra: "SharedInfra", outputs: list[AgentOutput]) -> None:
    """:func:`publish`'s state write of each output, as one batch."""
    names = [o.name for o in outputs]
    infra.state.set_many(S.state_keys(names), [o.answer for o in outputs], S.state_writers(names))


async def run_load_bearing(infra: "SharedInfra", runner: "AgentRunner", job: AgentJob, *,
                           partial: Any = None) -> AgentOutput:
    """Run an agent the pattern cannot do without (supervisor, reducer, main agent): no state write.

    Its spend is recorded even when it then fails.

    Raises:
        BudgetExhausted: the budget denied it (``partial`` attached).
        AgentFailed: it failed (``partial`` attached).
    """
    try:
        admit(infra)
    except BudgetError as err:
        progress.refused(infra)
        raise BudgetExhausted(str(err)).with_partial(partial) from err
    run = await run_one(infra, runner, job)
    if run.output is not None:
        infra.record_output(run.output)  # spent, even by a runner that then reported a failure
    if run.output is None or run.error is not None:
        raise AgentFailed(job.spec.name, run.error or S.MISSING_RESULT).with_partial(partial)
    return run.output


async def run_finalizer(infra: "SharedInfra", runner: "AgentRunner", spec: AgentSpec, task: str) -> AgentOutput | None:
    """Run an optional finalizer (synthesizer), without ``spec.tools``: ``None`` when denied or failed."""
    try:
        admit(infra)
    except BudgetError:
        progress.refused(infra)
        return None
    run = await run_one(infra, runner, AgentJob(spec, task, register_spec_tools=False))
    if run.output is not None:
        infra.record_output(run.output)
    if run.output is None or run.error is not None:
        return None
    return run.output
