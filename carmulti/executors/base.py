"""The executor seam: patterns decide *what* runs, executors decide *where*.

This module is the whole interface between the two layers (``carmulti.executors``
re-exports it):

* :class:`AgentJob` — one agent to run (spec, task, isolation, extra tools, the
  coordinator-side tool executor and mailbox).
* :class:`AgentRun` — what an executor reports for one job.
* :class:`Coordination` — the narrow view of a coordination an executor may use:
  ``state``, ``log``, ``policies``, ``budget``, ``agent_timeout_s``
  (:class:`~carmulti.SharedInfra` implements it).
* :class:`Executor` — ``run_agent`` / ``run_batch`` / ``start`` / ``aclose``.

An executor turns each job into an agent run with :func:`carmulti.executors.agent_run.run_agent`
(the one place that builds the runtime, applies the timeout and the exception
rules and checks the output), wherever it runs it: on the caller's loop
(:class:`~carmulti.LocalExecutor`), in a worker process
(:class:`~carmulti.ProcessExecutor`), on a cluster. It never knows which pattern
called it; a pattern never touches a process or a socket.

Contract for every executor:

* ``run_agent`` never raises for an agent failure: a raising runner, a timeout
  or a lost worker is an :class:`AgentRun` with ``error`` set. Only
  ``asyncio.CancelledError`` (the caller cancelled) propagates, and errors that
  end the executor itself (``WorkerPoolGaveUp``, a closed executor).
* A runner may return an :class:`~carmulti.AgentOutput` or a plain ``str``;
  a ``str`` becomes ``AgentOutput(name=spec.name, answer=s, turns=1,
  duration_ms=<measured>)``.
* With ``job.isolated`` the agent's writes go to an overlay that the pattern
  merges (``AgentRun.merge``) only if the agent succeeded; otherwise they reach
  ``coordination.state`` (as they happen in-process; with the result in a worker).
* ``job.mailbox is None``: the executor gives the agent a fresh mailbox of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

from ..types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from carcore import EventLog, StateStore

    from ..budget import CoordinationBudget
    from ..policy import PolicyEngine
    from ..runner import AgentRunner
    from ..runtime import ToolExecutor

__all__ = ["IDEMPOTENT_METADATA_KEY", "AgentJob", "AgentRun", "Coordination", "Executor"]

#: ``AgentSpec.metadata`` key: ``True`` declares the agent safe to run twice, so an
#: executor may re-run it after losing it to a crashed worker (``ProcessExecutor``).
IDEMPOTENT_METADATA_KEY = "idempotent"


@dataclass(slots=True)
class AgentJob:
    """One agent to run.

    Attributes:
        spec: The agent.
        task: The task text handed to the runner.
        isolated: Give the agent a copy-on-write overlay instead of the shared store.
        tools: Tools registered on the agent's runtime before ``spec.tools``,
            name → JSON schema of the parameters or ``None`` (e.g. the
            delegator's ``{"delegate": DELEGATE_SCHEMA}``).
        tool_executor: Executor installed on the runtime before the runner starts
            (it runs in the coordinator; a process executor proxies calls to it).
        mailbox: The mailbox handed to the runner (a coordinator-side
            :class:`~carmulti.Mailbox` or :class:`~carmulti.PooledMailbox`,
            brokered across processes); ``None`` = a fresh one from the executor.
        register_spec_tools: Register ``spec.tools`` on the runtime (the swarm's
            synthesizer runs without them, as in Rust).
        validate_job_tools: Validate parameters of ``tools`` against their
            schemas (``False``: schemas are advertised only; see
            ``Runtime.register_tool(validate=...)``).
        capture_writes: Report the agent's state writes in ``AgentRun.writes``
            (set by the lifecycle when the coordination is journaled).
    """

    spec: AgentSpec
    task: str
    isolated: bool = False
    tools: Mapping[str, Any] | None = None
    tool_executor: "ToolExecutor | None" = None
    mailbox: Any = None
    register_spec_tools: bool = True
    validate_job_tools: bool = True
    capture_writes: bool = False


@dataclass(slots=True)
class AgentRun:
    """What an executor reports for one job.

    Attributes:
        output: The runner's output; ``None`` when there is none (the runner
            raised, timed out, was lost, returned a malformed output). Present
            together with ``error`` when the runner itself returned an
            ``AgentOutput`` with ``error`` set (every field is kept).
        error: Why the run failed; ``None`` on success.
        duration_ms: Measured wall time of the run, in milliseconds.
        context: The isolated overlay holder (``AgentContext``, with
            ``merge_to_parent(policy)`` and ``discard()``), or ``None``.
        writes: With ``job.capture_writes``, the agent's state writes in order
            (``["s", key, value, writer]`` / ``["d", key, writer]``; an isolated
            agent's are its overlay's changes); ``None`` otherwise.
    """

    output: AgentOutput | None
    error: str | None
    duration_ms: float
    context: Any = None
    writes: list[Any] | None = None

    @property
    def ok(self) -> bool:
        """True iff the run succeeded (``error is None``)."""
        return self.error is None

    def merge(self, policy: str = "last_writer_wins") -> None:
        """Publish the isolated overlay (no-op when not isolated)."""
        if self.context is not None:
            self.context.merge_to_parent(policy)

    def discard(self) -> None:
        """Drop the isolated overlay (no-op when not isolated)."""
        if self.context is not None:
            self.context.discard()


@runtime_checkable
class Coordination(Protocol):
    """What an executor may see of a coordination (:class:`~carmulti.SharedInfra` is one).

    Attributes:
        state: The shared store agents read and write.
        log: The event log agents' runtimes append to.
        policies: Checked before every action.
        budget: Charged by runners (``runtime.budget``) and by the patterns.
        agent_timeout_s: Bound on every agent run, in seconds, or ``None``.
    """

    state: "StateStore"
    log: "EventLog"
    policies: "PolicyEngine"
    budget: "CoordinationBudget"
    agent_timeout_s: float | None


@runtime_checkable
class Executor(Protocol):
    """Where agents run: :class:`~carmulti.LocalExecutor`, :class:`~carmulti.ProcessExecutor`.

    A new executor implements these four methods and runs each job with
    :func:`carmulti.executors.agent_run.run_agent` wherever it runs it.
    """

    async def run_agent(self, runner: "AgentRunner", job: AgentJob, coordination: Coordination) -> AgentRun:
        """Run one agent; never raises for an agent failure (see the module docstring)."""
        ...

    async def run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob],
                        coordination: Coordination) -> list[AgentRun]:
        """Run ``jobs`` concurrently; results in job order."""
        ...

    async def start(self) -> None:
        """Start (workers, connections); optional: executors also start lazily."""
        ...

    async def aclose(self) -> None:
        """Stop and release everything; idempotent."""
        ...
