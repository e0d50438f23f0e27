"""The executor seam: patterns decide *what* runs, executors decide *where*.

A pattern builds an :class:`AgentJob` and awaits ``executor.run_agent(runner,
job, infra)``; the executor builds the agent's :class:`~carmulti.Runtime`
(shared or isolated), runs the runner, applies the timeout, and returns an
:class:`AgentRun`. An executor never knows which pattern called it; a pattern
never touches a process or a socket.

Contract for every executor:

* ``run_agent`` never raises for an agent failure: a raising runner, a timeout
  or a lost worker is an :class:`AgentRun` with ``error`` set. Only
  ``asyncio.CancelledError`` (the caller cancelled) propagates.
* A runner may return an :class:`~carmulti.AgentOutput` or a plain ``str``;
  a ``str`` becomes ``AgentOutput(name=spec.name, answer=s, turns=1,
  duration_ms=<measured>)``.
* With ``job.isolated`` the agent's writes go to an overlay that the pattern
  merges (``AgentRun.merge``) only if the agent succeeded.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

from ..types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner
    from ..runtime import ToolExecutor

__all__ = ["IDEMPOTENT_METADATA_KEY", "AgentJob", "AgentRun", "Executor", "GC_RELAX_AT", "coerce_output", "gc_relax",
           "gc_restore"]

#: ``AgentSpec.metadata`` key: ``True`` declares the agent safe to run twice, so an
#: executor may re-run it after losing it to a crashed worker (``ProcessExecutor``).
IDEMPOTENT_METADATA_KEY = "idempotent"

#: Batches at least this large raise the GC thresholds while they run (see ``gc_relax``).
GC_RELAX_AT = 1000
_gc_depth = 0
_gc_saved: tuple[int, int, int] = (700, 10, 10)


def gc_relax() -> None:
    """Raise the cyclic GC's thresholds while a big batch runs; pair with :func:`gc_restore`.

    A 100k-agent fan-out allocates millions of short-lived acyclic objects
    (frames, dicts, outputs); with the default threshold (700) the collector
    runs thousands of times and rescans every live object in the oldest
    generation: measured 2-3x of a zero-latency fan-out's time on the local
    executor, 10-15% of the process coordinator's. Nested batches share one
    saved setting; the last one restores it.
    """
    global _gc_depth, _gc_saved
    if _gc_depth == 0:
        _gc_saved = gc.get_threshold()  # type: ignore[assignment]
        t0, t1, t2 = _gc_saved
        gc.set_threshold(max(t0, 100_000), max(t1, 50), max(t2, 100))
    _gc_depth += 1


def gc_restore() -> None:
    """Undo one :func:`gc_relax`."""
    global _gc_depth
    _gc_depth -= 1
    if _gc_depth == 0:
        gc.set_threshold(*_gc_saved)


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
        mailbox: The mailbox handed to the runner; ``None`` = a fresh one.
        register_spec_tools: Register ``spec.tools`` on the runtime (the swarm's
            synthesizer runs without them, as in Rust).
        validate_job_tools: Validate parameters of ``tools`` against their
            schemas (``False``: schemas are advertised only; see
            ``Runtime.register_tool(validate=...)``).
    """

    spec: AgentSpec
    task: str
    isolated: bool = False
    tools: Mapping[str, Any] | None = None
    tool_executor: "ToolExecutor | None" = None
    mailbox: Any = None
    register_spec_tools: bool = True
    validate_job_tools: bool = True


@dataclass(slots=True)
class AgentRun:
    """What an executor reports for one job.

    Attributes:
        output: The runner's output (``None`` when it failed).
        error: Why the run failed (runner exception text, ``timeout after {n}s``,
            lost worker, bad return type); ``None`` on success.
        duration_ms: Measured wall time of the run, in milliseconds.
        context: The isolated overlay holder (``AgentContext``-like, with
            ``merge_to_parent(policy)`` and ``discard()``), or ``None``.
    """

    output: AgentOutput | None
    error: str | None
    duration_ms: float
    context: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def merge(self, policy: str = "last_writer_wins") -> None:
        """Publish the isolated overlay (no-op when not isolated)."""
        if self.context is not None:
            self.context.merge_to_parent(policy)

    def discard(self) -> None:
        if self.context is not None:
            self.context.discard()


def coerce_output(result: Any, spec: AgentSpec, duration_ms: float, runtime: Any = None) -> tuple[AgentOutput | None, str | None]:
    """Turn a runner's return value into ``(output, error)``.

    ``AgentOutput`` passes through; ``str`` is wrapped as
    ``AgentOutput(name=spec.name, answer=s, turns=1, duration_ms=duration_ms)``,
    with ``tool_calls``/``tools_used`` taken from ``runtime`` when given;
    anything else is an error naming the type.
    """
    if isinstance(result, AgentOutput):
        return result, None
    if isinstance(result, str):
        out = AgentOutput(name=spec.name, answer=result, turns=1, duration_ms=duration_ms)
        if runtime is not None:
            out.tool_calls = runtime.tool_calls
            out.tools_used = list(runtime.tools_used)
        return out, None
    return None, (f"runner returned {type(result).__name__} for agent '{spec.name}'; "
                  "AgentRunner.run must return an AgentOutput or a str")


def exception_text(exc: BaseException) -> str:
    """The error text of a failed agent: ``str(exc)``, or the type name when that is empty."""
    return str(exc) or type(exc).__name__


@runtime_checkable
class Executor(Protocol):
    """Where agents run. Implemented by ``LocalExecutor`` and ``ProcessExecutor``."""

    async def run_agent(self, runner: "AgentRunner", job: AgentJob, infra: "SharedInfra") -> AgentRun: ...

    async def run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob], infra: "SharedInfra") -> list[AgentRun]: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


async def gather_runs(executor: Executor, runner: "AgentRunner", jobs: Sequence[AgentJob],
                      infra: "SharedInfra") -> list[AgentRun]:
    """Default ``run_batch``: every job concurrently, results in job order."""
    if not jobs:
        return []
    if len(jobs) == 1:
        return [await executor.run_agent(runner, jobs[0], infra)]
    big = len(jobs) >= GC_RELAX_AT
    if big:
        gc_relax()
    try:
        return list(await asyncio.gather(*[executor.run_agent(runner, j, infra) for j in jobs]))
    finally:
        if big:
            gc_restore()
