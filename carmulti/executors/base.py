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
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

import orjson

from ..types import AgentOutput, AgentSpec, TokenAccounting

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner
    from ..runtime import ToolExecutor

__all__ = ["IDEMPOTENT_METADATA_KEY", "INVALID_OUTPUT", "AgentJob", "AgentRun", "Executor", "GC_RELAX_AT", "check_output",
           "gc_relax", "gc_restore", "json_problem", "output_problem"]

#: Prefix of the error of an agent whose runner returned a malformed output.
INVALID_OUTPUT = "invalid output from runner: "

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


#: Counts (turns, tool calls, tokens) must fit a signed 64-bit integer: the budget's
#: shared-memory counters and the Rust crate's integer fields hold no more.
_COUNT_LIMIT = 2**63
#: orjson options that refuse what ``carcore.StateStore.set`` refuses (datetimes, dataclasses).
_STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _tn(v: Any) -> str:
    return type(v).__name__


def _count_problem(v: Any, field: str) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool):
        return f"{field}: expected an int >= 0, got {_tn(v)}"
    if not -_COUNT_LIMIT <= v < _COUNT_LIMIT:
        return f"{field}: {v} is outside the 64-bit range"
    if v < 0:
        return f"{field}: expected an int >= 0, got {v}"
    return None


def _number_problem(v: Any, field: str) -> str | None:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return f"{field}: expected a finite number >= 0, got {_tn(v)}"
    if isinstance(v, int):
        return None if 0 <= v < _COUNT_LIMIT else f"{field}: expected a finite number >= 0, got {v}"
    if not math.isfinite(v) or v < 0:
        return f"{field}: expected a finite number >= 0, got {v!r}"
    return None


def _str_problem(v: Any, field: str, *, non_empty: bool = False) -> str | None:
    if not isinstance(v, str):
        return f"{field}: expected a {'non-empty ' if non_empty else ''}str, got {_tn(v)}"
    if non_empty and not v:
        return f"{field}: expected a non-empty str, got ''"
    return None


def output_problem(o: AgentOutput) -> str | None:
    """Why ``o`` is not a valid runner output, or ``None``: the one check both executors apply.

    Every field must have its documented type (see :class:`~carmulti.AgentOutput`):
    ``name`` a non-empty str; ``answer`` a str; ``turns``/``tool_calls`` ints
    ``>= 0`` within 64 bits; ``duration_ms`` a finite number ``>= 0``; ``error``
    a str or None; ``outcome`` JSON (validated as state values are: no NaN,
    no integers beyond 64 bits, no datetimes or dataclasses); ``tokens`` None or a
    :class:`~carmulti.TokenAccounting` with non-negative 64-bit counts and a finite
    ``cost_usd >= 0``; ``tools_used`` a list of str.

    Returns:
        ``"<field>: <what is wrong>"`` for the first bad field, or ``None``.
    """
    p = _str_problem(o.name, "name", non_empty=True) or _str_problem(o.answer, "answer")
    if p:
        return p
    p = _count_problem(o.turns, "turns") or _count_problem(o.tool_calls, "tool_calls")
    if p:
        return p
    p = _number_problem(o.duration_ms, "duration_ms")
    if p:
        return p
    if o.error is not None and not isinstance(o.error, str):
        return f"error: expected a str or None, got {_tn(o.error)}"
    t = o.tokens
    if t is not None:
        if not isinstance(t, TokenAccounting):
            return f"tokens: expected a TokenAccounting or None, got {_tn(t)}"
        i, out, cost = t.input_tokens, t.output_tokens, t.cost_usd
        for v, f in ((i, "input_tokens"), (out, "output_tokens")):
            if not isinstance(v, int) or isinstance(v, bool):
                return f"tokens.{f}: expected an int >= 0, got {_tn(v)}"
            if not -_COUNT_LIMIT <= v < _COUNT_LIMIT:
                return f"tokens.{f}: {v} is outside the 64-bit range"
        if not isinstance(cost, (int, float)) or isinstance(cost, bool):
            return f"tokens.cost_usd: expected a finite number >= 0, got {_tn(cost)}"
        if cost != cost or cost in (math.inf, -math.inf):
            return f"tokens.cost_usd: expected a finite number >= 0, got {cost!r}"
        if i < 0 or out < 0 or cost < 0:
            return (f"reported spend must be non-negative, got input_tokens={i} "
                    f"output_tokens={out} cost_usd={cost}")
    tu = o.tools_used
    if type(tu) is not list:
        return f"tools_used: expected a list of str, got {_tn(tu)}"
    for k, name in enumerate(tu):
        if not isinstance(name, str):
            return f"tools_used[{k}]: expected a str, got {_tn(name)}"
    if o.outcome is not None:
        bad = json_problem(o.outcome, "$.outcome")
        if bad is not None:
            return f"outcome: {bad}"
    return None


def json_problem(value: Any, path: str = "$") -> str | None:
    """Why ``value`` is not JSON as the state store takes it, naming the ``$.path``, or ``None``.

    Refused: non-finite floats, integers outside 64 bits, non-str keys, and every
    type orjson cannot encode (``set``, ``bytes``, datetimes, dataclasses, ...).
    """
    try:
        orjson.dumps(value, option=_STRICT_JSON)
    except TypeError:
        pass
    else:
        if not _has_non_finite(value):
            return None
    return _first_json_problem(value, path) or f"not JSON-serializable at {path}"


def _has_non_finite(v: Any) -> bool:
    t = type(v)
    if t is float:
        return not math.isfinite(v)
    if t is dict:
        return any(_has_non_finite(x) for x in v.values())
    if t is list or t is tuple:
        return any(_has_non_finite(x) for x in v)
    return False


def _first_json_problem(v: Any, path: str) -> str | None:
    if isinstance(v, float) and not math.isfinite(v):
        return f"{path}: non-finite float {v!r} has no JSON representation"
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                return f"{path}: object key {k!r} is not a str"
            p = _first_json_problem(x, f"{path}.{k}")
            if p:
                return p
        return None
    if isinstance(v, (list, tuple)):
        for k, x in enumerate(v):
            p = _first_json_problem(x, f"{path}[{k}]")
            if p:
                return p
        return None
    try:
        orjson.dumps(v, option=_STRICT_JSON)
    except TypeError as exc:
        return f"{path}: {exc}"
    return None


def check_output(result: Any, spec: AgentSpec, duration_ms: float, runtime: Any = None) -> tuple[AgentOutput | None, str | None]:
    """Turn a runner's return value into ``(output, error)``: the one place both executors check it.

    * ``str`` becomes ``AgentOutput(name=spec.name, answer=s, turns=1,
      duration_ms=duration_ms)``, with ``tool_calls``/``tools_used`` taken from
      ``runtime`` when given.
    * A valid :class:`~carmulti.AgentOutput` passes through (``duration_ms`` and
      ``cost_usd`` normalised to ``float``); ``error`` is its own ``error`` (a
      runner may report a failure itself; every field is kept).
    * Anything else is ``(None, "invalid output from runner: <field>: ...")``
      or a message naming the returned type.
    """
    if type(result) is str:
        out = AgentOutput(name=spec.name, answer=result, turns=1, duration_ms=duration_ms)
        if runtime is not None:
            out.tool_calls = runtime.tool_calls
            out.tools_used = list(runtime.tools_used)
        return out, None
    if isinstance(result, AgentOutput):
        problem = output_problem(result)
        if problem is not None:
            return None, f"{INVALID_OUTPUT}{problem}"
        if type(result.duration_ms) is not float:
            result.duration_ms = float(result.duration_ms)
        t = result.tokens
        if t is not None and type(t.cost_usd) is not float:
            t.cost_usd = float(t.cost_usd)
        if result.outcome is not None:  # as the state store does: the JSON form (tuple -> list), on every executor
            result.outcome = orjson.loads(orjson.dumps(result.outcome))
        return result, result.error
    if isinstance(result, str):  # a str subclass: keep the plain text
        return check_output(str(result), spec, duration_ms, runtime)
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
