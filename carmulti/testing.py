"""Deterministic runners for users' tests (no model, no network).

* :class:`EchoRunner` answers from a template (``"{name}: {task}"``), optionally
  reporting a fixed token spend and sleeping a fixed latency.
* :class:`ScriptedRunner` replays scripted steps per agent and fails loudly on an
  unexpected call (:class:`UnexpectedAgentCall`) or, at
  :meth:`ScriptedRunner.assert_consumed`, on steps never used
  (:class:`UnconsumedSteps`) -- like openai-agents' ``ScriptedModel``.
* :class:`FunctionRunner` wraps a plain ``async def`` as a runner.
* :class:`ReplayRunner` answers from a journal (``SharedInfra(journal=...)``)
  and raises :class:`~carmulti.ReplayDivergence` for a run it has no record of.

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
import os
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Union

from .durable import TASK_HEAD, apply_writes, job_digest, read_records, reissue
from .errors import ReplayDivergence
from .types import AgentOutput, AgentSpec, TokenAccounting

__all__ = ["EchoRunner", "FunctionRunner", "ReplayRunner", "ScriptedRunner", "Step", "UnconsumedSteps",
           "UnexpectedAgentCall"]

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


class ReplayRunner:
    """Answers every agent from the records of a journal (``SharedInfra(journal=PATH)``); never calls a model.

    A call is matched to the records of the same inputs (spec name, system
    prompt, tools, metadata and task: ``carmulti.durable.job_digest``); the
    n-th call with those inputs in this process gets their n-th recorded run
    (after the last, the last again). It issues the run's recorded
    agent-starting tool calls again through ``runtime.executor`` (a
    ``Delegator``'s ``delegate``, a ``SpawnSubtask``'s ``spawn_subtask``: the
    agents they start are answered from the journal too), applies its recorded
    state writes through ``runtime.state`` and returns its recorded output.

    Picklable (dill): on the process and Ray executors each worker reads the
    journal itself, once, and counts occurrences for the calls it serves.

    Args:
        journal: The journal file (read without taking its writer lock, up to
            its first damaged line).

    Attributes:
        calls: ``(agent name, task)`` per call, in call order (in-process only).

    Raises (from ``run``):
        ReplayDivergence: no recorded run has these inputs; the reason names
            what differs (an agent never recorded, a task never recorded for it,
            or the same task with another spec). Like any runner exception it
            becomes the agent's ``error`` (a load-bearing agent: ``AgentFailed``).
    """

    def __init__(self, journal: "str | os.PathLike[str]") -> None:
        self.path = os.fspath(journal)
        self.calls: list[tuple[str, str]] = []
        self._by_digest: dict[str, list[dict[str, Any]]] | None = None
        self._by_name: dict[str, list[dict[str, Any]]] = {}
        self._seen: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}  # each process reads the journal and counts for itself

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        by_digest: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for d in read_records(self.path):
            digest, _, n = d["key"].rpartition(":")
            by_digest.setdefault(digest, []).append((int(n) if n.isdigit() else 0, d))
            self._by_name.setdefault(str(d.get("name")), []).append(d)
        index = {k: [d for _, d in sorted(v, key=lambda t: t[0])] for k, v in by_digest.items()}
        self._by_digest = index
        return index

    def _why(self, name: str, task: str) -> str:
        recs = self._by_name.get(name)
        if not recs:
            names = sorted(self._by_name)
            shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            return (f"no recorded run of agent {name!r} in {self.path}"
                    + (f" (recorded agents: {shown})" if names else " (it records no agent)"))
        head = task[:TASK_HEAD]
        if any(r.get("task") == head for r in recs):
            return (f"agent {name!r} was recorded with a task that starts the same, but its spec (system prompt, "
                    f"tools, metadata) or the rest of its task differs")
        heads = list(dict.fromkeys(str(r.get("task")) for r in recs))
        shown = "; ".join(repr(h[:60] + ("..." if len(h) > 60 else "")) for h in heads[:3])
        return (f"no recorded run of agent {name!r} with this task ({head[:60]!r}...); recorded tasks for "
                f"{name!r} start with {shown}")

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        self.calls.append((spec.name, task))
        index = self._by_digest if self._by_digest is not None else self._load()
        digest = job_digest(spec, task)
        recs = index.get(digest)
        if not recs:
            raise ReplayDivergence(spec.name, self._why(spec.name, task))
        n = self._seen.get(digest, 0)
        self._seen[digest] = n + 1
        rec = recs[min(n, len(recs) - 1)]
        calls = rec.get("calls")
        if calls and runtime.executor is not None:
            await reissue(runtime.executor, calls)
        writes = rec.get("writes")
        if writes:
            apply_writes(runtime.state, writes)
        return AgentOutput.from_dict(rec["output"])


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
