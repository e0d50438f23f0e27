"""The one agent run: ``(runner, job, environment) -> AgentRun``, shared by every executor.

:func:`run_agent` is the whole trip of one agent wherever it runs (on the
caller's loop, in a worker process, on a cluster node): it builds the agent's
:class:`~carmulti.Runtime` over the environment's state view (or an isolated
overlay of it), registers the job's and the spec's tools, installs the tool
executor, calls ``runner.run(spec, task, runtime, mailbox)``, applies
``agent_timeout_s`` (cancel, then ``cancel_grace_s``, then hand the runner to
the executor as abandoned), applies the exception rules, and checks the output
(:func:`check_output`). Executors differ only in the environment they pass:
the coordination's own objects in-process, proxies in a worker.

Exception rules (both executors): a runner's ``Exception`` is the agent's error
(``str(exc)``, or the type name when empty); any other ``BaseException``
(``SystemExit``, ``GeneratorExit``) is ``join error: {type}: {msg}``; a
``CancelledError`` the runner raised itself is
``join error: CancelledError raised by the runner``; the caller's cancellation
propagates, and so does ``KeyboardInterrupt`` in the coordinator's process (in a
worker, ``env.remote``, it can only come from the runner: a ``join error`` too).
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Generator, Mapping

import orjson

from .. import _strings as S
from .. import tracing as _tracing
from ..durable import RecordingState, overlay_writes
from ..isolation import AgentContext, TaskScope
from ..runtime import Runtime
from ..types import AgentOutput, AgentSpec, TokenAccounting
from .base import AgentJob, AgentRun

if TYPE_CHECKING:
    from ..runner import AgentRunner
    from ..runtime import ToolExecutor

__all__ = ["AgentEnvironment", "check_output", "exception_text", "json_problem", "output_problem", "run_agent"]


@dataclass(slots=True)
class AgentEnvironment:
    """What one agent runs against; built by its executor.

    Attributes:
        state: The shared state view (a ``carcore.StateStore``; in a worker, a
            view whose reads go to the coordinator and whose writes are shipped
            back with the result).
        log: The event sink (``append(kind, data, *, agent, action_id, proposal_id)``).
        policies: Checked before every action.
        budget: The coordination budget (``runtime.budget``).
        timeout_s: ``agent_timeout_s``, in seconds, or ``None``.
        cancel_grace_s: After the timeout's cancellation, how long the runner
            may take to stop, in seconds.
        isolate: Makes the agent's :class:`~carmulti.AgentContext` for an
            isolated job (default: an overlay of ``state``).
        on_abandoned: Called with ``(task, agent name)`` for a runner still
            running ``cancel_grace_s`` after its timeout's cancellation; the
            executor decides its fate (the local executor keeps it, a worker
            asks to be killed).
        remote: The agent runs away from the coordinator (a worker process, a
            cluster node): its ``invoke_agent`` span is CLIENT, else INTERNAL
            (see :mod:`carmulti.tracing`).
        trace_context: The trace context its job carried (W3C ``traceparent``
            carrier): the parent of its ``invoke_agent`` span; ``None``: the
            current context.
    """

    state: Any
    log: Any
    policies: Any
    budget: Any
    timeout_s: float | None = None
    cancel_grace_s: float = 1.0
    isolate: Callable[[str], AgentContext] | None = None
    on_abandoned: Callable[["asyncio.Task[Any]", str], None] | None = None
    remote: bool = False
    trace_context: Mapping[str, str] | None = None


def run_agent(runner: "AgentRunner", job: AgentJob, env: AgentEnvironment, *, mailbox: Any,
              tool_executor: "ToolExecutor | None" = None) -> Coroutine[Any, Any, AgentRun]:
    """Run one agent in ``env`` (await the result); never raises for an agent failure.

    A plain function returning the run's coroutine, so a 100k-agent batch
    creates one coroutine per agent, not one per layer.

    Args:
        runner: The caller's runner.
        job: What to run.
        env: The state, log, policies, budget and timeout it runs against.
        mailbox: What the runner gets as ``mailbox`` (the executor chooses:
            ``job.mailbox``, a proxy of it, or a fresh one).
        tool_executor: Installed on the runtime (``job.tool_executor`` or a proxy of it).

    Returns:
        The :class:`AgentRun` (see ``executors.base``); isolated jobs carry their
        :class:`~carmulti.AgentContext` in ``context``.

    Raises:
        asyncio.CancelledError: the caller cancelled (the runner is cancelled too).
        KeyboardInterrupt: raised in the runner, unless ``env.remote`` (then a failed run).
    """
    if _tracing.ENABLED:  # an ``invoke_agent`` span around the run (carmulti.tracing), when something records it
        trace = _tracing.agent_trace(job.spec, env.remote, env.trace_context, env.timeout_s)
        if trace is not None:
            return _traced(trace, _run_agent(runner, job, env, mailbox, tool_executor, trace))
    return _run_agent(runner, job, env, mailbox, tool_executor, None)


async def _traced(trace: "_tracing.AgentTrace", coro: Coroutine[Any, Any, AgentRun]) -> AgentRun:
    run: AgentRun = await trace.run(coro)
    return run


def _runtime(job: AgentJob, env: AgentEnvironment,
             tool_executor: "ToolExecutor | None") -> tuple[Runtime, AgentContext | None, RecordingState | None]:
    """The agent's runtime with its tools, its context when isolated, its recorder when writes are captured.

    Apart from :func:`_run_agent` so the coroutine's frame, kept for as long as the agent runs (a million
    agents in flight), holds none of these locals.
    """
    spec = job.spec
    ctx: AgentContext | None = None
    recorder: RecordingState | None = None
    if job.isolated:
        ctx = env.isolate(spec.name) if env.isolate is not None else AgentContext(spec.name, env.state)
        rt = Runtime(ctx.local_state, env.log, env.policies, agent=spec.name, budget=env.budget)
    elif job.capture_writes:  # a journaled coordination records the agent's writes
        recorder = RecordingState(env.state)
        rt = Runtime(recorder, env.log, env.policies, agent=spec.name, budget=env.budget)
    else:
        rt = Runtime(env.state, env.log, env.policies, agent=spec.name, budget=env.budget)
    tools = job.tools
    if tools:
        validate = job.validate_job_tools
        for name, schema in tools.items():
            rt.register_tool(name, schema, validate=validate)
    if job.register_spec_tools:
        for name in spec.tools:
            rt.register_tool(name)
    if tool_executor is not None:
        rt.set_executor(tool_executor)
    return rt, ctx, recorder


async def _run_agent(runner: "AgentRunner", job: AgentJob, env: AgentEnvironment, mailbox: Any,
                     tool_executor: "ToolExecutor | None", trace: "_tracing.AgentTrace | None") -> AgentRun:
    # Only what lives across the await is a local here: this frame is kept while the agent runs (a million
    # agents in flight); the setup is in _runtime, the endings in _failed and _finished.
    rt, ctx, recorder = _runtime(job, env, tool_executor)
    stepped: _Stepped | None = None
    t0 = time.perf_counter()
    try:
        coro = runner.run(job.spec, job.task, rt, mailbox)
        if trace is not None:
            coro = trace.observe(coro)
        if ctx is not None:
            coro = TaskScope.run(ctx, coro)
        if env.timeout_s is None:
            result = await coro
        else:
            stepped = _Stepped(coro)
            result = await _with_timeout(stepped, env.timeout_s, env, job.spec.name)
    except BaseException as exc:  # noqa: BLE001 - agent failures are values (_failed re-raises the others)
        return _failed(exc, job, env, stepped, t0, ctx)
    return _finished(result, job, env, rt, ctx, recorder, stepped, t0)


def _failed(exc: BaseException, job: AgentJob, env: AgentEnvironment, stepped: "_Stepped | None", t0: float,
            ctx: AgentContext | None) -> AgentRun:
    """The run of a runner that raised ``exc`` (the exception rules above); called in the ``except`` block,
    it re-raises the caller's cancellation and, in the coordinator's process, ``KeyboardInterrupt``."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # our caller cancelled us
        # the runner itself raised CancelledError (e.g. awaited a task it had cancelled)
        return AgentRun(None, S.RUNNER_CANCELLED, (time.perf_counter() - t0) * 1000.0, ctx)
    if isinstance(exc, _Timeout):
        _warn_if_blocking(stepped, env.timeout_s, job.spec.name)
        return AgentRun(None, S.TIMEOUT.format(timeout=env.timeout_s), (time.perf_counter() - t0) * 1000.0, ctx)
    if isinstance(exc, Exception):
        return AgentRun(None, exception_text(exc), (time.perf_counter() - t0) * 1000.0, ctx)
    # SystemExit, GeneratorExit inside a runner: a crashed agent
    if isinstance(exc, KeyboardInterrupt) and not env.remote:
        raise  # the user's Ctrl-C; in a worker process it can only come from the runner: that agent fails
    return AgentRun(None, S.JOIN_ERROR.format(details=f"{type(exc).__name__}: {exc}"),
                    (time.perf_counter() - t0) * 1000.0, ctx)


def _finished(result: Any, job: AgentJob, env: AgentEnvironment, rt: Runtime, ctx: AgentContext | None,
              recorder: RecordingState | None, stepped: "_Stepped | None", t0: float) -> AgentRun:
    """The run of a runner that returned ``result``: checked (:func:`check_output`), with its writes when captured."""
    dur = (time.perf_counter() - t0) * 1000.0
    timeout = env.timeout_s
    if stepped is not None and _warn_if_blocking(stepped, timeout, job.spec.name):
        return AgentRun(None, S.TIMEOUT.format(timeout=timeout), dur, ctx)
    output, err = check_output(result, job.spec, dur, rt)
    run = AgentRun(output, err, dur, ctx)
    if job.capture_writes and err is None:
        run.writes = recorder.ops if recorder is not None else overlay_writes(ctx) if ctx is not None else []
    return run


def exception_text(exc: BaseException) -> str:
    """The error text of a failed agent: ``str(exc)``, or the type name when that is empty."""
    return str(exc) or type(exc).__name__


async def _with_timeout(aw: Any, timeout: float, env: AgentEnvironment, name: str) -> Any:
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()  # our caller was cancelled: so is the runner
        raise
    if done:
        return task.result()
    task.cancel()
    done, _ = await asyncio.wait((task,), timeout=env.cancel_grace_s)
    if not done:
        if env.on_abandoned is not None:
            env.on_abandoned(task, name)
    elif not task.cancelled():
        task.exception()  # mark retrieved: the agent timed out whatever it did after
    raise _Timeout()


class _Timeout(Exception):
    pass


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
    if (type(o.name) is str and o.name and type(o.answer) is str and type(o.turns) is int
            and 0 <= o.turns < _COUNT_LIMIT and type(o.tool_calls) is int and 0 <= o.tool_calls < _COUNT_LIMIT
            and type(o.duration_ms) is float and 0.0 <= o.duration_ms < math.inf and o.error is None
            and o.tokens is None and o.outcome is None and type(o.tools_used) is list and not o.tools_used):
        return None  # the common shape, checked at once
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


def check_output(result: Any, spec: AgentSpec, duration_ms: float, runtime: Runtime | None = None) -> tuple[AgentOutput | None, str | None]:
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
    if type(result) is str:  # on every agent's path: positional (name, answer, turns, tool_calls, duration_ms, ...)
        if runtime is not None:
            return AgentOutput(spec.name, result, 1, runtime.tool_calls, duration_ms, None, None, None,
                               runtime._used_tools()), None
        return AgentOutput(spec.name, result, 1, 0, duration_ms), None
    if isinstance(result, AgentOutput):
        problem = output_problem(result)
        if problem is not None:
            return None, S.INVALID_OUTPUT.format(problem=problem)
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
    return None, S.WRONG_RETURN_TYPE.format(type=type(result).__name__, name=spec.name)


class _Stepped:
    """Drives a runner's coroutine and remembers its longest single step, in seconds.

    A step that runs longer than the agent's timeout blocked the event loop
    (``time.sleep``, CPU-bound code): no timeout can interrupt it in-process.
    Used only when ``agent_timeout_s`` is set.
    """

    __slots__ = ("coro", "longest")

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.longest = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        clock = time.perf_counter
        value: Any = None
        exc: BaseException | None = None
        while True:
            t = clock()
            try:
                y = coro.send(value) if exc is None else coro.throw(exc)
            except StopIteration as stop:
                self._note(clock() - t)
                return stop.value
            except BaseException:
                self._note(clock() - t)
                raise
            self._note(clock() - t)
            try:
                value = yield y
                exc = None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # noqa: BLE001 - forwarded to the runner (cancellation)
                value, exc = None, e

    def _note(self, dt: float) -> None:
        if dt > self.longest:
            self.longest = dt


def _warn_if_blocking(stepped: _Stepped | None, timeout: float | None, name: str) -> bool:
    """Warn (naming the agent) when one step of its runner outlasted its timeout; True if it did."""
    if stepped is None or timeout is None or stepped.longest < timeout:
        return False
    warnings.warn(f"agent {name!r} blocked the event loop for {stepped.longest:.2f}s in one step, past its "
                  f"agent_timeout_s={timeout}s: a timeout cannot interrupt code that blocks the event loop "
                  "(time.sleep, CPU-bound work); await asyncio.to_thread(...) for blocking calls, or run such agents "
                  "on ProcessExecutor, which kills a worker whose loop stays blocked", RuntimeWarning, stacklevel=2)
    return True
