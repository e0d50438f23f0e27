"""The runtime's action types: what an agent proposes and what each action returned.

Plain data (car-ir ``Action``, ``ActionProposal``, ``ActionResult``, ...) shared by
the :class:`~carmulti.Runtime` that executes proposals, the
:class:`~carmulti.PolicyEngine` that checks actions, and the runners that build
proposals from model output. This module imports nothing else of carmulti but
the argument checks, so policy and runtime both depend on it and not on each
other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from ._validate import int_at_least

__all__ = [
    "Action",
    "ActionProposal",
    "ActionResult",
    "ActionStatus",
    "ActionType",
    "FailureBehavior",
    "Precondition",
    "ProposalResult",
]


class ActionType(str, enum.Enum):
    """What an action does (car-ir ``ActionType``, snake_case values)."""

    TOOL_CALL = "tool_call"
    STATE_WRITE = "state_write"
    STATE_READ = "state_read"
    ASSERTION = "assertion"


class FailureBehavior(str, enum.Enum):
    """What a failed action does to the rest of its proposal.

    * ``ABORT`` (default): skip the remaining actions and undo this proposal's writes.
    * ``SKIP``: record the failure and go on.
    * ``RETRY``: retry (``max_retries``, or 3 when that is 0), then go on like ``SKIP``.
    """

    ABORT = "abort"
    RETRY = "retry"
    SKIP = "skip"


class ActionStatus(str, enum.Enum):
    """Final status of one action (car-ir ``ActionStatus``)."""

    PROPOSED = "proposed"
    VALIDATED = "validated"
    REJECTED = "rejected"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


_OPERATORS = ("eq", "neq", "exists", "not_exists", "gt", "lt", "gte", "lte", "contains")


@dataclass(frozen=True)
class Precondition:
    """A condition on the agent's state that must hold before an action runs.

    Attributes:
        key: State key.
        operator: One of ``eq, neq, exists, not_exists, gt, lt, gte, lte, contains``.
        value: Right-hand side (ignored by ``exists``/``not_exists``).
    """

    key: str
    operator: str = "exists"
    value: Any = None

    def __post_init__(self) -> None:
        if self.operator not in _OPERATORS:
            raise ValueError(f"Precondition({self.key!r}): operator must be one of {', '.join(_OPERATORS)}, got {self.operator!r}")

    def holds(self, state: Any) -> bool:
        """Evaluate against ``state`` (anything with ``exists``/``get``)."""
        op = self.operator
        if op == "exists":
            return bool(state.exists(self.key))
        if op == "not_exists":
            return not state.exists(self.key)
        cur = state.get(self.key)
        try:
            if op == "eq":
                return bool(cur == self.value)
            if op == "neq":
                return bool(cur != self.value)
            if op == "gt":
                return cur is not None and bool(cur > self.value)
            if op == "lt":
                return cur is not None and bool(cur < self.value)
            if op == "gte":
                return cur is not None and bool(cur >= self.value)
            if op == "lte":
                return cur is not None and bool(cur <= self.value)
            return cur is not None and self.value in cur  # contains
        except TypeError:
            return False

    def describe(self) -> str:
        return f"{self.key} {self.operator} {self.value!r}" if self.operator not in ("exists", "not_exists") else f"{self.key} {self.operator}"


@dataclass
class Action:
    """One step of a proposal (car-ir ``Action``).

    Attributes:
        id: Unique within its proposal.
        action_type: See :class:`ActionType`.
        tool: Tool name (``TOOL_CALL`` only).
        parameters: Tool parameters; for ``STATE_WRITE`` ``{"key": str, "value": json}``,
            for ``STATE_READ`` ``{"key": str}``, for ``ASSERTION``
            ``{"key": str, "operator": str, "value": json}``.
        preconditions: Checked against the agent's state before execution.
        state_dependencies: State keys this action depends on (recorded in events).
        idempotent: Cache the output by tool + parameters; a repeat is served
            from the cache (``action_deduplicated`` event).
        max_retries: Extra attempts after a failure, an int >= 0 (delays 0.1 s, 0.2 s, 0.4 s, ...).
        failure_behavior: See :class:`FailureBehavior`.
        timeout_ms: Per-attempt limit for tool calls, in milliseconds (an int >= 1), or None.
        metadata: Opaque JSON.

    Raises:
        ValueError: ``max_retries`` or ``timeout_ms`` is not such an int (a bool never is).
    """

    id: str
    action_type: ActionType = ActionType.TOOL_CALL
    tool: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    preconditions: list[Precondition] = field(default_factory=list)
    state_dependencies: list[str] = field(default_factory=list)
    idempotent: bool = False
    max_retries: int = 0
    failure_behavior: FailureBehavior = FailureBehavior.ABORT
    timeout_ms: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.action_type = ActionType(self.action_type)
        self.failure_behavior = FailureBehavior(self.failure_behavior)
        int_at_least(self.max_retries, 0, f"Action({self.id!r}).max_retries")
        int_at_least(self.timeout_ms, 1, f"Action({self.id!r}).timeout_ms", allow_none=True)

    @classmethod
    def tool_call(cls, id: str, tool: str, parameters: Mapping[str, Any] | None = None, **kw: Any) -> "Action":
        """Shorthand for a ``TOOL_CALL`` action."""
        return cls(id=id, action_type=ActionType.TOOL_CALL, tool=tool, parameters=dict(parameters or {}), **kw)

    @classmethod
    def state_write(cls, id: str, key: str, value: Any, **kw: Any) -> "Action":
        """Shorthand for a ``STATE_WRITE`` action."""
        return cls(id=id, action_type=ActionType.STATE_WRITE, parameters={"key": key, "value": value}, **kw)

    @classmethod
    def state_read(cls, id: str, key: str, **kw: Any) -> "Action":
        """Shorthand for a ``STATE_READ`` action."""
        return cls(id=id, action_type=ActionType.STATE_READ, parameters={"key": key}, **kw)


@dataclass
class ActionProposal:
    """A batch of actions proposed by one agent turn (car-ir ``ActionProposal``)."""

    id: str
    source: str
    actions: list[Action]
    context: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class ActionResult:
    """Outcome of one action.

    Attributes:
        action_id: The action's id.
        status: ``SUCCEEDED``, ``FAILED``, ``REJECTED`` or ``SKIPPED``.
        output: Tool output / value read (JSON), ``None`` otherwise.
        error: Why it did not succeed.
        attempts: Executions tried (0 when rejected or skipped).
        duration_ms: Wall time in milliseconds.
    """

    action_id: str
    status: ActionStatus
    output: Any = None
    error: str | None = None
    attempts: int = 0
    duration_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status is ActionStatus.SUCCEEDED


@dataclass
class ProposalResult:
    """Outcome of :meth:`Runtime.execute`: one :class:`ActionResult` per action, in order."""

    proposal_id: str
    results: list[ActionResult]

    @property
    def all_succeeded(self) -> bool:
        """True when every action succeeded."""
        return all(r.status is ActionStatus.SUCCEEDED for r in self.results)
