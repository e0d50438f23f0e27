"""Per-agent state isolation (car-multi ``task_context``).

An :class:`AgentContext` wraps a copy-on-write ``carcore.Overlay`` of the shared
store: reads fall through to the parent, writes and deletes stay local, and
:meth:`AgentContext.merge_to_parent` publishes them atomically. Patterns merge
only agents that succeeded, in agent order, after the whole batch finished;
failed agents' overlays are discarded.

:class:`TaskScope` makes the current agent's context available to code running
inside it (a ``contextvars.ContextVar``, the Python counterpart of a tokio
task-local).
"""

from __future__ import annotations

import contextvars
from typing import Any, Awaitable, Callable, TypeVar

__all__ = ["AgentContext", "TaskScope"]

T = TypeVar("T")

_CURRENT: contextvars.ContextVar["AgentContext | None"] = contextvars.ContextVar("carmulti_agent_context", default=None)


class AgentContext:
    """An agent's isolated view of the shared state.

    Args:
        agent_name: The agent; also the writer id of merged transitions.
        parent_state: The shared ``carcore.StateStore`` (or an ``Overlay``).
        local_state: An existing view that already keeps this agent's writes
            local (a process executor's worker-side state view); default: a
            fresh ``parent_state.overlay(agent_name)``.

    Raises:
        TypeError: neither ``parent_state`` nor ``local_state`` is given.
    """

    __slots__ = ("agent_name", "parent_state", "local_state")

    def __init__(self, agent_name: str, parent_state: Any = None, *, local_state: Any = None) -> None:
        if local_state is None:
            if parent_state is None:
                raise TypeError(f"AgentContext({agent_name!r}) needs a parent_state to overlay (or a local_state)")
            local_state = parent_state.overlay(agent_name)
        self.agent_name = agent_name
        self.parent_state = parent_state
        # Duck-typed: a carcore.Overlay, or a worker's StateView (same reads and writes, no
        # merge_to_parent: its writes travel back with the result). The methods below give the
        # results the types Overlay's stub declares.
        self.local_state = local_state

    def get(self, key: str, default: Any = None) -> Any:
        """Local value if written here, else the parent's."""
        return self.local_state.get(key, default)

    def set(self, key: str, value: Any) -> Any:
        """Write locally (invisible to others until merged)."""
        return self.local_state.set(key, value, self.agent_name)

    def delete(self, key: str) -> Any:
        """Delete locally (hides the parent's key until merged)."""
        return self.local_state.delete(key, self.agent_name)

    def exists(self, key: str) -> bool:
        found: bool = self.local_state.exists(key)
        return found

    def changes(self) -> tuple[dict[str, Any], list[str]]:
        """Local ``(sets, deletes)``."""
        changes: tuple[dict[str, Any], list[str]] = self.local_state.changes()
        return changes

    def merge_to_parent(self, policy: str = "last_writer_wins") -> list[Any]:
        """Apply the local sets and deletes to the parent atomically.

        Args:
            policy: ``"last_writer_wins"`` or ``"first_committer_wins"``.

        Returns:
            The parent's new ``StateTransition`` records.

        Raises:
            carcore.MergeConflictError: ``first_committer_wins`` and a key this
                agent read or wrote changed in the parent meanwhile; nothing applied.
        """
        merged: list[Any] = self.local_state.merge_to_parent(policy)
        return merged

    def discard(self) -> None:
        """Drop the local changes."""
        self.local_state.discard()

    def __repr__(self) -> str:
        return f"<AgentContext {self.agent_name!r}>"


class TaskScope:
    """Run code with an :class:`AgentContext` as the current task-local context."""

    @staticmethod
    async def run(ctx: AgentContext, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` with ``ctx`` current; restores the previous context after."""
        token = _CURRENT.set(ctx)
        try:
            return await awaitable
        finally:
            _CURRENT.reset(token)

    @staticmethod
    def current() -> AgentContext | None:
        """The current context, or ``None`` outside a scope."""
        return _CURRENT.get()

    @staticmethod
    def try_with(fn: Callable[[AgentContext], T]) -> T | None:
        """``fn(current context)``, or ``None`` outside a scope."""
        ctx = _CURRENT.get()
        return None if ctx is None else fn(ctx)

    @staticmethod
    def agent_name() -> str | None:
        """The current agent's name, or ``None`` outside a scope."""
        ctx = _CURRENT.get()
        return None if ctx is None else ctx.agent_name
