"""The agents a process worker runs: one :class:`WorkerJob` per agent, one :class:`WorkerCoordination` per
coordination it serves (split from :mod:`.worker`, whose :class:`~.worker.WorkerProcess` is the
:class:`JobHost` of both).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from ... import _strings as S
from ...isolation import AgentContext
from ...types import AgentOutput, AgentSpec
from ..base import AgentRun
from . import wire
from .proxies import EventSink, StateView

__all__ = ["JobHost", "WorkerCoordination", "WorkerJob"]


class JobHost(Protocol):
    """What a :class:`WorkerJob` reports to when its agent is done (the worker process)."""

    out_done: list[tuple[int, AgentOutput]]

    def _end(self, job: "WorkerJob") -> None: ...

    def _result(self, jid: int, run: AgentRun, writes: list[Any] | None) -> None: ...

    def schedule_flush(self) -> None: ...

    def _flush(self) -> None: ...

    def _send(self, frames: list[bytes]) -> None: ...


class WorkerCoordination:
    """One coordination's budget (attached shared memory), policies and event sink, in this worker."""

    __slots__ = ("budget", "policies", "sink", "error", "jobs", "forgotten")

    def __init__(self, budget: Any, policies: Any, sink: EventSink, error: str | None = None) -> None:
        self.budget = budget
        self.policies = policies
        self.sink = sink
        self.error = error
        self.jobs = 0  # running jobs of this coordination
        self.forgotten = False  # the coordinator is done with it: release when its last job ends

    def release(self) -> None:
        """Unmap the budget's shared memory."""
        if self.budget is not None:
            try:
                self.budget.close()
            except Exception:  # noqa: BLE001 - best effort: a mapping, not data
                pass
            self.budget = None


class WorkerJob:
    """One agent running in this worker; called with its task when the task is done (its done callback)."""

    __slots__ = ("worker", "id", "spec", "view", "task", "finished", "stuck", "coordination", "coordination_id", "t0")

    def __init__(self, worker: "JobHost", jid: int, spec: AgentSpec, view: StateView,
                 coordination: WorkerCoordination, coordination_id: int, t0: float) -> None:
        self.worker = worker
        self.id = jid
        self.spec = spec
        self.view = view
        self.task: asyncio.Task[Any] | None = None
        self.finished = False
        self.stuck = False  # ignored its timeout's cancellation: ask to be killed after the result
        self.coordination = coordination
        self.coordination_id = coordination_id
        self.t0 = t0  # time.perf_counter() when its frame arrived

    # Bound methods, not per-job closures, for the agent's environment (a worker may hold 500k agents).
    def isolate(self, name: str) -> AgentContext:
        """An isolated agent's context: its state view already keeps writes local."""
        return AgentContext(name, local_state=self.view)

    def abandoned(self, task: "asyncio.Task[Any]", name: str) -> None:
        """It ignored its timeout's cancellation: ask to be killed after the result."""
        self.stuck = True

    def __call__(self, task: "asyncio.Task[AgentRun]") -> None:
        """The agent's task is done: report its run (none when cancelled: the coordinator cancelled it, or the
        worker is stopping). The task runs ``run_agent`` itself, no wrapper coroutine (a worker may hold 500k
        agents): ``run_agent`` returns every agent failure as a run, so an exception here is a crash of the
        run itself, reported as the agent's error."""
        w = self.worker
        if task.cancelled():
            w._end(self)
            return
        exc = task.exception()
        if exc is None:
            run = task.result()
        else:
            run = AgentRun(None, S.JOIN_ERROR.format(details=f"{type(exc).__name__}: {exc}"),
                           (time.perf_counter() - self.t0) * 1000.0)
        w._end(self)
        out = run.output
        ops = self.view.ops
        if (out is not None and not ops and out.error is None and out.turns == 1 and out.tool_calls == 0
                and out.tokens is None and out.outcome is None and not out.tools_used
                and out.duration_ms == run.duration_ms and out.name == self.spec.name):
            w.out_done.append((self.id, out))  # the common success: a batch's "done" columns
            w.schedule_flush()
        else:
            w._result(self.id, run, ops or None)
        if self.stuck:  # the runner ignored its timeout's cancellation: report, then ask to be killed
            w._flush()
            w._send(wire.encode({"t": "stuck", "job": self.id}))
