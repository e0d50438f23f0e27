"""Deterministic runners for users' tests (no model, no network).

* :class:`EchoRunner` answers from a template (``"{name}: {task}"``), optionally
  reporting a fixed token spend and sleeping a fixed latency.
* :class:`ScriptedRunner` replays scripted steps per agent and fails loudly on an
  unexpected call (:class:`UnexpectedAgentCall`) or, at
  :meth:`ScriptedRunner.assert_consumed`, on steps never used
  (:class:`UnconsumedSteps`) -- like openai-agents' ``ScriptedModel``.
* :class:`FunctionRunner` wraps a plain ``async def`` as a runner.

All are picklable with dill, so they run on the process executor too; there
each worker runs its own copy, so what a runner *records* (``EchoRunner.calls``,
``ScriptedRunner.calls``, ``remaining()``, ``assert_consumed()``) only reflects
calls made in the process that holds it: use them with the in-process executor,
and a ``Mapping`` script (per agent name) when agents may land in different workers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Union

from .types import AgentOutput, AgentSpec, TokenAccounting

__all__ = ["EchoRunner", "FunctionRunner", "ScriptedRunner", "Step", "UnconsumedSteps", "UnexpectedAgentCall"]

#: One scripted step: an answer, a full output, an exception to raise, or a
#: callable ``(spec, task) -> answer``.
Step = Union[str, AgentOutput, BaseException, Callable[[AgentSpec, str], str]]


class UnexpectedAgentCall(AssertionError):
    """A :class:`ScriptedRunner` was called for an agent with no step left."""


class UnconsumedSteps(AssertionError):
    """A :class:`ScriptedRunner` still holds steps the code under test never used."""


class EchoRunner:
    """Answers ``template.format(name=spec.name, task=task)``.

    Args:
        template: Answer template; fields ``name`` and ``task``.
        tokens: ``(input_tokens, output_tokens, cost_usd)`` reported per call, or ``None``.
        latency_s: Seconds to ``asyncio.sleep`` before answering (simulated model latency).

    Attributes:
        calls: ``(agent name, task)`` per call, in call order (in-process only).
    """

    def __init__(self, template: str = "{name}: {task}", *, tokens: tuple[int, int, float] | None = None,
                 latency_s: float = 0.0) -> None:
        self.template = template
        self.tokens = tokens
        self.latency_s = latency_s
        self.calls: list[tuple[str, str]] = []

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        t0 = time.perf_counter()
        self.calls.append((spec.name, task))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        tok = None if self.tokens is None else TokenAccounting(*self.tokens)
        return AgentOutput(name=spec.name, answer=self.template.format(name=spec.name, task=task), turns=1,
                           duration_ms=(time.perf_counter() - t0) * 1000.0, tokens=tok)


class ScriptedRunner:
    """Replays scripted steps.

    Args:
        script: Agent name → its steps, consumed one per call in order; or a
            flat iterable of steps consumed by whichever agent calls next.

    Raises (from ``run``):
        UnexpectedAgentCall: no step left for that agent.
        BaseException: a scripted exception step (fails that agent).
    """

    def __init__(self, script: Mapping[str, Iterable[Step]] | Iterable[Step]) -> None:
        self._by_name: dict[str, collections.deque[Step]] | None
        self._flat: collections.deque[Step] | None
        if isinstance(script, Mapping):
            self._by_name = {k: collections.deque(v) for k, v in script.items()}
            self._flat = None
        else:
            self._by_name = None
            self._flat = collections.deque(script)
        self.calls: list[tuple[str, str]] = []

    def _next(self, name: str) -> Step:
        q = self._flat if self._by_name is None else self._by_name.get(name)
        if not q:
            raise UnexpectedAgentCall(f"ScriptedRunner: no scripted step left for agent {name!r}")
        return q.popleft()

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        self.calls.append((spec.name, task))
        step = self._next(spec.name)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, AgentOutput):
            return step
        answer = step(spec, task) if callable(step) else step
        return AgentOutput(name=spec.name, answer=answer, turns=1, duration_ms=0.0)

    def remaining(self) -> int:
        """Steps not yet used."""
        if self._by_name is None:
            return len(self._flat or ())
        return sum(len(q) for q in self._by_name.values())

    def assert_consumed(self) -> None:
        """Raise :class:`UnconsumedSteps` if any scripted step was never used."""
        left = self.remaining()
        if left:
            detail = "" if self._by_name is None else ": " + ", ".join(
                f"{k}={len(q)}" for k, q in self._by_name.items() if q)
            raise UnconsumedSteps(f"ScriptedRunner: {left} scripted step(s) never used{detail}")


class FunctionRunner:
    """Adapts ``async def fn(spec, task, runtime, mailbox) -> AgentOutput | str`` to a runner.

    ``fn`` may be an ``async def`` function or method, a :func:`functools.partial`
    of one, an object with an ``async def __call__``, or a decorated ``async def``
    (followed through ``__wrapped__``). A callable whose kind cannot be read
    (e.g. a compiled extension function) is accepted and checked when called.

    Args:
        fn: The async callable run for every agent.

    Raises:
        TypeError: ``fn`` is not callable, or is a plain (sync) ``def``, lambda or
            async generator function; the message names it and says to use
            ``async def`` (wrapping blocking code in ``asyncio.to_thread``).
    """

    def __init__(self, fn: Callable[[AgentSpec, str, Any, Any], Awaitable[AgentOutput | str]]) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionRunner takes an async callable fn(spec, task, runtime, mailbox), "
                            f"got {type(fn).__name__} {fn!r:.80}: pass an 'async def' function")
        why = _not_async(fn)
        if why is not None:
            raise TypeError(f"FunctionRunner: {_callable_name(fn)!r} is {why[0]}, but a runner function must be a "
                            f"coroutine function: {why[1]} (for blocking work, return "
                            "'await asyncio.to_thread(blocking_fn, ...)' from it)")
        self.fn = fn

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput | str:
        result = self.fn(spec, task, runtime, mailbox)
        if not inspect.isawaitable(result):
            raise TypeError(f"FunctionRunner: {_callable_name(self.fn)!r} returned {type(result).__name__}, not an "
                            "awaitable: define it with 'async def' (wrap blocking work in asyncio.to_thread)")
        return await result


def _callable_name(fn: Any) -> str:
    """``fn``'s qualified name, looking through partials; the type name for other callable objects."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__name__


def _not_async(fn: Any) -> tuple[str, str] | None:
    """(what ``fn`` is, how to fix it) when it is certainly not an async callable; None if it is or cannot be told."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        unwrapped = inspect.unwrap(fn)
    except ValueError:  # a __wrapped__ cycle
        unwrapped = fn
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(unwrapped):
        return None
    short = _callable_name(fn).rsplit(".", 1)[-1]
    if inspect.isasyncgenfunction(fn):
        return ("an async generator function (it yields; it cannot be awaited)",
                f"make 'async def {short}' return its answer instead of yielding it")
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        if short == "<lambda>":
            return "a lambda", "use a named 'async def fn(spec, task, runtime, mailbox)' instead"
        return "a plain def", f"define it as 'async def {short}(spec, task, runtime, mailbox)'"
    if inspect.isbuiltin(fn):
        return "a builtin function", "wrap it in an 'async def fn(spec, task, runtime, mailbox)'"
    if isinstance(fn, type):
        return None  # a class: calling it makes an instance, which may be awaitable; checked at call time
    call = getattr(type(fn), "__call__", None)
    if inspect.isfunction(call) and _not_async(call) is not None:
        return ("an object whose __call__ is a plain def",
                f"define {type(fn).__name__}.__call__ as 'async def __call__(self, spec, task, runtime, mailbox)'")
    return None
