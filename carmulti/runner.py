"""The caller-supplied model loop (car-multi ``runner``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["AgentRunner"]


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
