"""OpenTelemetry spans (extra ``otel``), following the GenAI semantic conventions.

The one module that knows OpenTelemetry. Three spans, nested::

    invoke_workflow {pattern}      INTERNAL  around a pattern's run (``Swarm.run``, ``Advisor.consult``, ...)
      invoke_agent {spec.name}     INTERNAL on the caller's loop; CLIENT in a worker process or Ray actor
        execute_tool {tool}        INTERNAL  around each execution of a tool call by the agent's runtime

Attributes (OpenTelemetry semantic conventions for GenAI agent spans, v1.41):

* every span: ``gen_ai.operation.name`` (``invoke_workflow`` / ``invoke_agent`` /
  ``execute_tool``); ``error.type`` and an ``ERROR`` status when it failed.
* ``invoke_workflow``: ``gen_ai.workflow.name`` -- the pattern, low-cardinality:
  ``swarm``, ``pipeline``, ``supervisor``, ``delegator``, ``map_reduce``, ``vote``,
  ``tournament``, ``fleet``, ``adversarial_review``, ``advisor``, ``spawn_subtask``.
  A pattern run inside another (``Supervisor``'s rounds are swarms) nests its span.
* ``invoke_agent``: ``gen_ai.agent.name`` (the spec's name), ``gen_ai.provider.name``
  (``spec.metadata["provider"]``, else ``_OTHER``), ``gen_ai.request.model``
  (``spec.metadata["model"]``, when a str), and from the output's tokens
  ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens`` and ``carmulti.cost_usd``.
* ``execute_tool``: ``gen_ai.tool.name``, ``gen_ai.tool.call.id`` (the action's id),
  ``gen_ai.tool.type`` = ``function``.

``error.type`` values: ``timeout`` (the agent's ``agent_timeout_s`` expired);
``invalid_output`` (the runner's return value failed the output check);
``agent_error`` (the runner returned an output with its own ``error``);
``cancelled`` (the caller cancelled); otherwise the exception's class name,
qualified by its module unless it is a builtin (``ValueError``,
``carmulti.ToolError``, ``carmulti.AgentFailed``); ``_OTHER``
when none applies.

Where spans go: to the ``TracerProvider`` given to :func:`set_tracer_provider`,
else to OpenTelemetry's global one. With neither (the API's proxy or no-op
provider), carmulti makes no span at all. Worker processes (``ProcessExecutor``,
``RayExecutor``) are separate interpreters: each needs its own provider and
exporter, installed by the executor's ``initializer`` (a callable run once in
every worker before it serves a job; see the README's "Tracing"). Each job
carries the coordinator's current trace context (W3C ``traceparent`` through
OpenTelemetry's global propagator), so a worker's ``invoke_agent`` span is a
child of the pattern's ``invoke_workflow`` span; tool calls a worker sends back
to the coordinator carry the ``execute_tool`` span's context the same way. A
worker flushes its provider when it stops.

Cost: without the ``opentelemetry-api`` package, :data:`ENABLED` is False, the
patterns' ``run`` methods are not wrapped and every hook is skipped by one flag
test. With the API but no provider, each agent costs one cached answer (tens of
nanoseconds; carmulti looks for a provider again every :data:`LOOK_AGAIN_S`).
Measured on ``python -m bench fanout --agents 100000`` (zero-latency agents): the
same throughput with and without the package; with a recording SDK provider,
an agent's span costs about 17 us (the SDK's span objects), more than a bare
zero-latency agent run itself.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import time
from typing import Any, Awaitable, Callable, Coroutine, Mapping, ParamSpec, TypeVar

from . import _strings as S

__all__ = ["ENABLED", "AgentTrace", "ToolSpan", "agent_trace", "context_for", "error_type", "flush", "inject",
           "preload", "set_tracer_provider", "tool_span", "tracer", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")

#: ``gen_ai.provider.name`` when ``spec.metadata`` names no ``provider``.
DEFAULT_PROVIDER = "_OTHER"
#: The instrumentation scope of carmulti's spans.
SCOPE = "carmulti"


def _probe() -> bool:
    """Whether the OpenTelemetry API can be imported (found, not imported: it is loaded on first use)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        return False


#: False when the OpenTelemetry API is not installed: every hook is skipped.
ENABLED: bool = _probe()

_trace: Any = None  # opentelemetry.trace, once loaded
_context: Any = None  # opentelemetry.context
_propagate: Any = None  # opentelemetry.propagate
_noop_providers: tuple[type, ...] = ()
_override: Any = None  # the provider given to set_tracer_provider()
_seen: Any = None  # the provider _tracer was made for
_tracer: Any = None  # carmulti's tracer; None when nothing would record
_final = False  # _seen is OpenTelemetry's global provider, which is set at most once: never look again
_next_look = 0.0  # while the global provider is the API's proxy: when to look again (time.monotonic())
#: While no provider is set, how often carmulti looks whether one has been, in seconds: a lookup
#: (``opentelemetry.trace.get_tracer_provider()``, which reads the environment) costs about as much as
#: a tenth of a bare agent run, so agents between two lookups reuse the last answer.
LOOK_AGAIN_S = 0.1


def _load() -> bool:
    """Import the API (first use); on failure turn tracing off for good."""
    global ENABLED, _trace, _context, _propagate, _noop_providers
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        ENABLED = False
        return False
    _context, _propagate = context, propagate
    _noop_providers = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    _trace = trace
    return True


def preload() -> None:
    """Import the API now rather than at the first span (a worker does, before it serves jobs: an import
    in the middle of a batch would stall every agent of its loop)."""
    if ENABLED and _trace is None:
        _load()


def set_tracer_provider(provider: Any) -> None:
    """Send carmulti's spans to ``provider`` (an OpenTelemetry ``TracerProvider``); ``None``: the global one.

    Like the ``tracer_provider=`` argument of OpenTelemetry instrumentations:
    nothing global changes. In a worker process, call it (or
    ``opentelemetry.trace.set_tracer_provider``) from the executor's ``initializer``.
    """
    global _override, _final, _next_look
    if provider is not None and _trace is None and not _load():
        return  # no API: nothing to send anywhere
    _override = provider
    _final, _next_look = False, 0.0  # look at the global provider again when this one is removed


def tracer() -> Any:
    """carmulti's tracer, or ``None`` when no span would be recorded (no API, or no provider set).

    A global provider set after carmulti last looked is seen within :data:`LOOK_AGAIN_S`.
    """
    global _seen, _tracer, _final, _next_look
    tp = _override
    if tp is None:
        if _final:
            return _tracer
        now = time.monotonic()
        if now < _next_look:
            return _tracer
        _next_look = now + LOOK_AGAIN_S
        if _trace is None and not _load():
            return None
        tp = _trace.get_tracer_provider()
        _final = not isinstance(tp, _trace.ProxyTracerProvider)
    if tp is not _seen:
        _tracer = None if isinstance(tp, _noop_providers) else tp.get_tracer(SCOPE, _version())
        _seen = tp
    return _tracer


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("carmulti")
    except Exception:  # noqa: BLE001 - not installed as a distribution: no version on the scope
        return None


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: ``ValueError``, ``carmulti.ToolError``; ``cancelled`` for cancellation."""
    t = type(exc)
    if t.__name__ == "CancelledError":
        return "cancelled"
    mod = t.__module__
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def _fail(span: Any, etype: str, message: str | None) -> None:
    span.set_attribute("error.type", etype)
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, message))


async def _in_span(span: Any, aw: Awaitable[R]) -> R:
    """Await ``aw`` with ``span`` current, then end it; a raise sets ``error.type`` and the error status."""
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        return await aw
    except BaseException as exc:
        _fail(span, error_type(exc), str(exc) or None)
        raise
    finally:
        _context.detach(token)
        span.end()


# -- workflow ----------------------------------------------------------------------------------------------------

def workflow(name: str) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate a pattern's ``async`` run method: it runs in an ``invoke_workflow {name}`` span.

    Without the OpenTelemetry API the method is returned unchanged.
    """
    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not ENABLED:
            return fn
        span_name = f"invoke_workflow {name}"
        attributes = {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": name}

        @functools.wraps(fn)
        def traced(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
            # A plain function returning the run's coroutine: with nothing recording, a pattern run
            # (a Supervisor's every round) costs no extra coroutine layer.
            coro = fn(*args, **kwargs)
            tr = tracer()
            if tr is None:
                return coro
            return _in_span(tr.start_span(span_name, kind=_trace.SpanKind.INTERNAL, attributes=attributes), coro)

        return traced

    return decorate


# -- agent -------------------------------------------------------------------------------------------------------

class AgentTrace:
    """The ``invoke_agent`` span of one agent run (see :func:`agent_trace`)."""

    __slots__ = ("span", "timeout_s", "raised")

    def __init__(self, span: Any, timeout_s: float | None) -> None:
        self.span = span
        self.timeout_s = timeout_s
        self.raised: str | None = None  # error.type of what the runner raised

    async def observe(self, coro: Awaitable[R]) -> R:
        """Await the runner's coroutine, noting the class of what it raises."""
        try:
            return await coro
        except BaseException as exc:
            self.raised = error_type(exc)
            raise

    async def run(self, aw: Awaitable[Any]) -> Any:
        """Await the agent run (an ``AgentRun``) with the span current; end the span with its outcome."""
        span = self.span
        token = _context.attach(_trace.set_span_in_context(span))
        try:
            run = await aw
        except BaseException as exc:  # the caller's cancellation, KeyboardInterrupt
            _fail(span, error_type(exc), str(exc) or None)
            span.end()
            raise
        finally:
            _context.detach(token)
        try:
            out = run.output
            tokens = out.tokens if out is not None else None
            if tokens is not None:
                span.set_attributes({"gen_ai.usage.input_tokens": tokens.input_tokens,
                                     "gen_ai.usage.output_tokens": tokens.output_tokens,
                                     "carmulti.cost_usd": float(tokens.cost_usd)})
            if run.error is not None:
                _fail(span, self._error_type(run), run.error)
        finally:
            span.end()
        return run

    def _error_type(self, run: Any) -> str:
        err: str = run.error
        if run.output is not None:
            return "agent_error"
        if self.timeout_s is not None and err == S.TIMEOUT.format(timeout=self.timeout_s):
            return "timeout"
        if self.raised is not None:
            return self.raised
        if err.startswith(S.INVALID_OUTPUT.partition("{")[0]) or err.startswith(S.WRONG_RETURN_TYPE.partition("{")[0]):
            return "invalid_output"
        return "_OTHER"


def agent_trace(spec: Any, remote: bool, carrier: Mapping[str, str] | None,
                timeout_s: float | None) -> AgentTrace | None:
    """Start the ``invoke_agent`` span of an agent about to run, or ``None`` when nothing records.

    Args:
        spec: The agent's ``AgentSpec``.
        remote: It runs in a worker process (span kind CLIENT), not on the caller's loop (INTERNAL).
        carrier: The trace context its job carried (the parent); ``None``: the current context.
        timeout_s: Its ``agent_timeout_s`` (to tell a timeout from other failures).
    """
    tr = tracer()
    if tr is None:
        return None
    md = spec.metadata
    provider = md.get("provider") if md else None
    attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent",
                             "gen_ai.provider.name": provider if isinstance(provider, str) else DEFAULT_PROVIDER,
                             "gen_ai.agent.name": spec.name}
    model = md.get("model") if md else None
    if isinstance(model, str):
        attrs["gen_ai.request.model"] = model
    parent = _propagate.extract(carrier) if carrier else None
    kind = _trace.SpanKind.CLIENT if remote else _trace.SpanKind.INTERNAL
    return AgentTrace(tr.start_span(f"invoke_agent {spec.name}", context=parent, kind=kind, attributes=attrs),
                      timeout_s)


# -- tool --------------------------------------------------------------------------------------------------------

class ToolSpan:
    """The ``execute_tool`` span of one tool execution (see :func:`tool_span`)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    async def run(self, aw: Awaitable[R]) -> R:
        """Await the tool execution with the span current; a raise sets ``error.type``."""
        return await _in_span(self.span, aw)


def tool_span(tool: str, call_id: str) -> ToolSpan | None:
    """Start the ``execute_tool {tool}`` span of a tool call about to execute, or ``None``."""
    tr = tracer()
    if tr is None:
        return None
    return ToolSpan(tr.start_span(f"execute_tool {tool}", kind=_trace.SpanKind.INTERNAL,
                                  attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                                              "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function"}))


# -- across processes --------------------------------------------------------------------------------------------

def inject() -> dict[str, str] | None:
    """The current trace context as a carrier (``{"traceparent": ...}``), or ``None`` when there is none."""
    if _trace is None and not _load():
        return None
    if not _trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return carrier or None


def context_for(carrier: Mapping[str, str] | None) -> contextvars.Context | None:
    """A ``contextvars.Context`` whose current trace context is ``carrier``'s (for ``create_task(context=)``).

    ``None`` (the caller's context applies) when there is no carrier or no API.
    """
    if not carrier or (_trace is None and not _load()):
        return None
    ctx = contextvars.copy_context()
    ctx.run(_context.attach, _propagate.extract(carrier))
    return ctx


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans a provider still buffers (a worker calls it when it stops)."""
    if _trace is None:
        return  # never loaded: no span was made here
    tp = _override if _override is not None else _trace.get_tracer_provider()
    f = getattr(tp, "force_flush", None)
    if f is not None:
        try:
            f(timeout_ms)
        except Exception:  # noqa: BLE001 - an exporter's failure must not stop the worker's shutdown
            pass
