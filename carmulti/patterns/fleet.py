"""Fleet: independent agents, each on its own mission, run side by side.

Port of car-multi ``patterns/fleet.rs`` (0.1 to 0.54; spec 4.8 and newer-patterns
A.2). The types are the crate's; its body was not visible, so the spec's
recommendations are taken (marked "[recommended]" below).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .. import tracing
from .._validate import seconds
from ..executors.base import AgentJob
from ..lifecycle import paced, run_round, shared_mailbox
from ..progress import display as progress_display
from ..runner import check_runner
from ..types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["Fleet", "FleetResult"]


@dataclass
class FleetResult:
    """Result of :meth:`Fleet.run`.

    Attributes:
        outputs: One output per agent, in agent order (failures, timeouts and
            budget skips included, with ``error`` set).
        duration_ms: Wall-clock time of the whole run, in milliseconds.
        succeeded: Outputs without ``error``.
        failed: Outputs with ``error``; ``succeeded + failed == len(outputs)``.
    """

    outputs: list[AgentOutput]
    duration_ms: float
    succeeded: int
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [o.to_dict() for o in self.outputs], "duration_ms": self.duration_ms,
                "succeeded": self.succeeded, "failed": self.failed}


class Fleet:
    """Agents on *different* problems: no ordering, no review loop, no shared task.

    Each agent's mission is its ``system_prompt``, which is also the task its
    runner receives [recommended]. They run concurrently (one batch on the
    executor); each is budget-gated first (a refused one is a budget-skipped
    output, counted in ``failed``) [recommended]. They share the coordination's
    state, event log and policies, and one mailbox for real-time messages (as a
    swarm's agents do). A successful agent writes ``agent.{name}.answer``
    (writer ``swarm.{name}``) [recommended].

    Args:
        agents: The agents (their order is output order).
        agent_timeout_s: Bound on each agent's run, in seconds (Rust
            ``agent_timeout_secs``); the shorter of it and
            ``SharedInfra.agent_timeout_s`` applies. On expiry the agent is
            cancelled and its output gets ``error == f"timeout after {n}s"``
            [recommended], exactly as for the infra's own timeout (on the process
            executor a runner that ignores cancellation is killed with its worker).
            ``None``: only the infra's timeout.

    Raises:
        TypeError: an agent is not an ``AgentSpec``.
        ValueError: ``agent_timeout_s`` is not a finite number of seconds > 0 (nor None).
    """

    def __init__(self, agents: Sequence[AgentSpec], agent_timeout_s: float | None = None) -> None:
        self.agents = list(agents)
        for i, a in enumerate(self.agents):
            if not isinstance(a, AgentSpec):
                raise TypeError(f"Fleet agents[{i}] must be an AgentSpec, got {type(a).__name__}")
        self.agent_timeout_s = seconds(agent_timeout_s, "Fleet agent_timeout_s", allow_none=True)

    def with_timeout(self, agent_timeout_s: float) -> "Fleet":
        """Return a copy whose agents are bounded by ``agent_timeout_s`` seconds (Rust ``with_timeout``).

        Raises:
            ValueError: not a finite number of seconds > 0.
        """
        f = copy.copy(self)
        f.agent_timeout_s = seconds(agent_timeout_s, "Fleet agent_timeout_s")
        return f

    @tracing.workflow("fleet")
    async def run(self, runner: "AgentRunner", infra: "SharedInfra", *, progress: bool = False) -> FleetResult:
        """Run every agent on its own mission; returns when all have finished (or timed out).

        Args:
            progress: Show a live display of the agents (done / failed / skipped,
                tokens, cost, rate, ETA) on stderr while it runs, when stderr is a
                terminal; nothing otherwise (:mod:`carmulti.progress`).

        Returns:
            The :class:`FleetResult`; agent failures are outputs, never exceptions.
        """
        check_runner(runner)
        with progress_display(progress, infra, "Fleet", len(self.agents)):
            return await self._run(runner, infra)

    async def _run(self, runner: "AgentRunner", infra: "SharedInfra") -> FleetResult:
        t0 = time.perf_counter()
        mailbox = shared_mailbox()
        with paced(len(self.agents)):  # the jobs are built paced too
            outputs = await run_round(infra, runner, [AgentJob(spec, spec.system_prompt, mailbox=mailbox)
                                                      for spec in self.agents], timeout_s=self.agent_timeout_s)
        ok = sum(1 for o in outputs if o.succeeded)
        return FleetResult(outputs, (time.perf_counter() - t0) * 1000.0, ok, len(outputs) - ok)
