"""Swarm: N agents on the same problem, in parallel, in sequence, or as a debate.

Port of car-multi 0.26 ``patterns/swarm.rs``: same strings, truncation,
ordering, state keys and budget gating (see ``carmulti._strings``).
"""

from __future__ import annotations

import asyncio
import copy
import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import _strings as S
from .. import tracing
from ..executors.base import AgentJob, AgentRun
from ..lifecycle import (conclude, paced, reserve, run_finalizer, run_one, run_round, shared_mailbox,
                         workspace_failed_output)
from ..progress import display as progress_display
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec, truncate
from ..workspace import AgentWorkspace, WorkspaceConfig, WorkspaceError, WorkspaceMode

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["Swarm", "SwarmMode", "SwarmResult"]


class SwarmMode(str, enum.Enum):
    """How a swarm's agents run."""

    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"
    DEBATE = "debate"


@dataclass
class SwarmResult:
    """Result of :meth:`Swarm.run`.

    Attributes:
        task: The task.
        outputs: One output per agent run, in agent order (debate: round 1 then round 2).
        final_summary: The synthesis (see :meth:`Swarm.synthesize`).
    """

    task: str
    outputs: list[AgentOutput]
    final_summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "outputs": [o.to_dict() for o in self.outputs], "final_summary": self.final_summary}


def _check_specs(agents: Sequence[AgentSpec], what: str) -> list[AgentSpec]:
    out = list(agents)
    for i, a in enumerate(out):
        if not isinstance(a, AgentSpec):
            raise TypeError(f"{what}[{i}] must be an AgentSpec, got {type(a).__name__}")
    return out


class Swarm:
    """N agents working on the same task.

    * ``PARALLEL``: all agents run concurrently on the unmodified task; each is
      gated by the budget before launch (skips become budget-skipped outputs).
    * ``SEQUENTIAL``: one after another; agent k gets
      ``"{task}\\n\\nPrior agents' findings:\\n- {name}: {answer≤300 bytes}..."``
      built from the succeeded prior outputs. Failures do not stop the chain.
    * ``DEBATE``: a parallel round, then a parallel critique round of agents
      named ``{name}_critique`` that see the others' answers.

    Successful agents write ``agent.{name}.answer`` (writer ``swarm.{name}``).

    Args:
        agents: The agents (order is output order).
        mode: :class:`SwarmMode`.

    Raises:
        TypeError: an element of ``agents`` is not an ``AgentSpec``.
    """

    def __init__(self, agents: Sequence[AgentSpec], mode: SwarmMode | str = SwarmMode.PARALLEL) -> None:
        self.agents = _check_specs(agents, "Swarm agents")
        self.mode = SwarmMode(mode)
        self.synthesizer: AgentSpec | None = None
        self.isolated = False
        self.workspaces: WorkspaceConfig | None = None

    def with_synthesizer(self, spec: AgentSpec) -> "Swarm":
        """Return a copy that synthesizes several answers with ``spec`` (an optional finalizer)."""
        s = copy.copy(self)
        s.synthesizer = spec
        return s

    def with_isolation(self) -> "Swarm":
        """Return a copy whose parallel agents write to per-agent overlays, merged on success."""
        s = copy.copy(self)
        s.isolated = True
        return s

    def with_workspaces(self, config: WorkspaceConfig) -> "Swarm":
        """Return a copy that gives each parallel agent its own workspace directory."""
        s = copy.copy(self)
        s.workspaces = config
        return s

    @tracing.workflow("swarm")
    async def run(self, task: str, runner: "AgentRunner", infra: "SharedInfra", *,
                  progress: bool = False) -> SwarmResult:
        """Run the swarm. Agent failures are outputs, never exceptions.

        Args:
            progress: Show a live display of the agents (done / failed / skipped,
                tokens, cost, rate, ETA) on stderr while it runs, when stderr is a
                terminal; nothing otherwise (:mod:`carmulti.progress`).
        """
        return await self._run(task, runner, infra, progress=progress)

    async def _run(self, task: str, runner: "AgentRunner", infra: "SharedInfra", *,
                   progress: bool = False) -> SwarmResult:
        """:meth:`run` without a workflow span of its own: for patterns that are a swarm inside (``Pipeline``, ``Vote``)."""
        check_runner(runner)
        planned = len(self.agents) * (2 if self.mode is SwarmMode.DEBATE else 1)
        with progress_display(progress, infra, "Swarm", planned):
            if self.mode is SwarmMode.PARALLEL:
                return await self._run_parallel(task, runner, infra)
            if self.mode is SwarmMode.SEQUENTIAL:
                return await self._run_sequential(task, runner, infra)
            return await self._run_debate(task, runner, infra)

    # -- parallel ----------------------------------------------------------------
    async def _run_parallel(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> SwarmResult:
        outputs = await self._parallel_outputs(self.agents, task, runner, infra, self.isolated, self.workspaces)
        summary = await self.synthesize(task, outputs, runner, infra)
        return SwarmResult(task, outputs, summary)

    @staticmethod
    async def _parallel_outputs(agents: Sequence[AgentSpec], task: str, runner: "AgentRunner", infra: "SharedInfra",
                                isolated: bool, workspaces: WorkspaceConfig | None) -> list[AgentOutput]:
        """One parallel round: every agent gated, run at once, concluded in agent order."""
        mailbox = shared_mailbox()
        with paced(len(agents)):  # the jobs are built and the runs concluded paced too
            if workspaces is None:
                return await run_round(infra, runner, [AgentJob(spec, task, isolated=isolated, mailbox=mailbox)
                                                       for spec in agents])
            slots: list[AgentOutput | int] = []
            jobs: list[AgentJob] = []
            spaces: list[AgentWorkspace | None] = []
            for spec in agents:
                # Before the budget reservation, so a provisioning failure burns no slot.
                try:
                    ws = await _provision(workspaces, spec.name)
                except WorkspaceError as err:
                    slots.append(workspace_failed_output(spec.name, err, infra))
                    continue
                skipped = reserve(infra, spec.name)
                if skipped is not None:
                    await _release(ws)
                    slots.append(skipped)
                    continue
                slots.append(len(jobs))
                jobs.append(AgentJob(ws.inject(spec), task, isolated=isolated, mailbox=mailbox))
                spaces.append(ws)
            runs = list(await asyncio.gather(*[_run_in_workspace(runner, j, ws, infra) for j, ws in zip(jobs, spaces)]))
            return [slot if isinstance(slot, AgentOutput) else conclude(infra, runs[slot], spec.name)
                    for spec, slot in zip(agents, slots)]

    # -- sequential --------------------------------------------------------------
    async def _run_sequential(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> SwarmResult:
        mailbox = shared_mailbox()
        outputs: list[AgentOutput] = []
        findings: list[str] = []  # one line per succeeded prior output, built once each
        for spec in self.agents:
            skipped = reserve(infra, spec.name)
            if skipped is not None:
                outputs.append(skipped)
                continue
            enriched = S.prior_findings(task, "\n".join(findings)) if outputs else task
            t0 = time.perf_counter()
            run = await run_one(infra, runner, AgentJob(spec, enriched, mailbox=mailbox))
            if run.error is not None and run.duration_ms <= 0.0:
                run.duration_ms = (time.perf_counter() - t0) * 1000.0
            out = conclude(infra, run, spec.name, keep_duration=True)
            outputs.append(out)
            if out.succeeded:
                findings.append(S.finding_line(out.name, truncate(out.answer, S.SEQUENTIAL_TRUNCATE)))
        summary = await self.synthesize(task, outputs, runner, infra)
        return SwarmResult(task, outputs, summary)

    # -- debate --------------------------------------------------------------------
    async def _run_debate(self, task: str, runner: "AgentRunner", infra: "SharedInfra") -> SwarmResult:
        # Both rounds are plain parallel rounds (Rust runs a fresh parallel Swarm each time: no isolation,
        # no workspaces, and the round's own synthesis is not used).
        round1 = await self._parallel_outputs(self.agents, task, runner, infra, False, None)
        lines = [(o.name, S.finding_line(o.name, truncate(o.answer, S.DEBATE_TRUNCATE)))
                 for o in round1 if o.succeeded]  # each answer's line built once
        critiques: list[AgentSpec] = []
        for spec in self.agents:
            others = "\n".join(line for name, line in lines if name != spec.name)
            critiques.append(spec._variant(
                S.CRITIQUE_NAME.format(name=spec.name),
                S.CRITIQUE_PROMPT.format(system_prompt=spec.system_prompt, task=task, others=others)))
        round2 = await self._parallel_outputs(critiques, task, runner, infra, False, None)
        outputs = round1 + round2
        summary = await self.synthesize(task, outputs, runner, infra)
        return SwarmResult(task, outputs, summary)

    # -- synthesis -----------------------------------------------------------------
    async def synthesize(self, task: str, outputs: Sequence[AgentOutput], runner: "AgentRunner",
                         infra: "SharedInfra") -> str:
        """Combine the succeeded answers into one text.

        None: ``[no agent produced an answer]``. One: that answer verbatim.
        Several with a synthesizer: the synthesizer's answer (budget-gated; on
        denial or failure, fall through). Otherwise ``## {name}\\n{answer}``
        sections joined by blank lines.
        """
        answers = [o for o in outputs if o.succeeded]
        if not answers:
            return S.NO_ANSWER
        if len(answers) == 1:
            return answers[0].answer
        if self.synthesizer is not None:
            lines = "\n".join(S.finding_line(o.name, truncate(o.answer, S.SYNTH_TRUNCATE)) for o in answers)
            out = await run_finalizer(infra, runner, self.synthesizer, S.SYNTH_TASK.format(task=task, lines=lines))
            if out is not None:
                return out.answer
        return S.sections(answers)


async def _run_in_workspace(runner: "AgentRunner", job: AgentJob, ws: AgentWorkspace | None,
                            infra: "SharedInfra") -> AgentRun:
    try:
        return await run_one(infra, runner, job)
    finally:
        if ws is not None:
            await _release(ws)


async def _provision(config: WorkspaceConfig, name: str) -> AgentWorkspace:
    """Provision off the event loop when it runs git (a worktree add takes tens of ms)."""
    if config.mode is WorkspaceMode.GIT_WORKTREE:
        return await asyncio.to_thread(AgentWorkspace.provision, config, name)
    return AgentWorkspace.provision(config, name)


async def _release(ws: AgentWorkspace) -> None:
    if ws.config.mode is WorkspaceMode.GIT_WORKTREE:
        await asyncio.to_thread(ws.close)
    else:
        ws.close()

