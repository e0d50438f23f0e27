"""The caller-supplied model loop (car-multi ``runner``)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["AgentRunner", "check_runner"]


@runtime_checkable
class AgentRunner(Protocol):
    """Drives one agent: carmulti decides *when* and *how* agents run, the runner *what* they do.

    A typical runner starts a chat with ``spec.system_prompt``, sends ``task``,
    turns tool calls into an :class:`~carmulti.ActionProposal`, runs it with
    ``await runtime.execute(proposal)``, feeds the results back, and repeats
    until the model answers or ``spec.max_turns`` is reached.

    The same runner object serves many agents concurrently, so it must not keep
    per-agent state on ``self``. On the process executor it is shipped once to
    each worker (dill), so closures and classes defined in a test module work.

    Return an :class:`~carmulti.AgentOutput`, or a plain ``str`` (wrapped as
    ``AgentOutput(name=spec.name, answer=s, turns=1, duration_ms=<measured>)``).
    Raising fails this agent only: its output gets ``error == str(exc)``.
    """

    async def run(self, spec: AgentSpec, task: str, runtime: "Runtime", mailbox: Any) -> AgentOutput | str: ...


def check_runner(runner: Any) -> None:
    """Fail fast, before any agent starts, when ``runner`` cannot be an :class:`AgentRunner`.

    Raises:
        TypeError: ``runner`` has no callable ``run`` attribute (e.g. a plain
            function: wrap it with :class:`carmulti.testing.FunctionRunner`),
            or is a class instead of an instance.
    """
    run = getattr(runner, "run", None)
    if callable(run) and not isinstance(runner, type):
        return
    if inspect.isfunction(runner) or inspect.ismethod(runner) or inspect.isbuiltin(runner):
        what = f"function {getattr(runner, '__qualname__', runner)!r}"
    elif isinstance(runner, type):
        what = f"the class {runner.__qualname__!r} (pass an instance: {runner.__qualname__}())"
    else:
        what = f"a {type(runner).__name__} without a run method"
    raise TypeError(f"runner must be an AgentRunner, an object with `async def run(self, spec, task, runtime, "
                    f"mailbox)`; got {what}. Wrap an async function with carmulti.testing.FunctionRunner(fn)")
