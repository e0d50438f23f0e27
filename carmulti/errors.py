"""The carmulti error tree.

Every error carmulti raises on purpose derives from :class:`carcore.CarError`::

    Exception
     └── CarError                          (carcore.errors: root of carcore + carmulti)
          ├── MergeConflictError           overlay merge refused (first_committer_wins)
          ├── LogCorruptedError            journal damaged in the middle
          └── MultiError                   any coordination failure (Rust ``MultiError``)
               ├── AgentFailed             a load-bearing agent failed: ``agent '{name}' failed: {msg}``
               ├── MailboxSend             ``mailbox send error: {msg}``
               │    └── MailboxFull        a bounded inbox stayed full past the send timeout
               ├── MailboxTimeout          ``mailbox recv timeout for agent '{agent}'``
               ├── UnknownSpecialist       ``unknown specialist: '{name}'``
               ├── NoOutput                ``no agents produced output``
               ├── MaxRoundsExceeded       ``max rounds exceeded: {n}``
               ├── BudgetExhausted         ``coordination budget exhausted: {msg}``
               ├── AdvisorExhausted        ``advisor exhausted: used {used} of {max_uses} allowed consultations``
               ├── BudgetError             a spawn was refused by the coordination budget
               ├── PoolAtCapacity          ``agent pool at capacity ({running}/{max})``
               ├── WorkerPoolGaveUp        process executor: too many worker restarts (restart intensity)
               ├── ToolError               a tool call failed (message becomes the action's error)
               ├── WireProtocolError       a malformed frame between coordinator and worker
               ├── WorkspaceError          a workspace could not be provisioned
               ├── ReplayDivergence        ``replay diverged at agent '{agent}': {reason}`` (ReplayRunner)
               └── LLMRunnerError          a model call failed (carmulti.runners: model, endpoint, HTTP status)

The display texts in the right-hand column are the Rust crate's (car-multi
``error.rs``, spec table 2.5) and are part of the contract: tests and downstream
consumers match on them.

Errors raised in the middle of a coordination (for example :class:`AgentFailed`
from a supervisor that failed in round 2) carry the work already done in
``partial`` so nothing accepted is lost.
"""

from __future__ import annotations

from typing import Any, TypeVar

from carcore.errors import CarError, LogCorruptedError, MergeConflictError

__all__ = [
    "AdvisorExhausted",
    "AgentFailed",
    "BudgetError",
    "BudgetExhausted",
    "CarError",
    "LogCorruptedError",
    "MailboxFull",
    "MailboxSend",
    "MailboxTimeout",
    "MaxRoundsExceeded",
    "MergeConflictError",
    "MultiError",
    "NoOutput",
    "PoolAtCapacity",
    "ReplayDivergence",
    "ToolError",
    "UnknownSpecialist",
    "WireProtocolError",
    "WorkerPoolGaveUp",
    "WorkspaceError",
]


class MultiError(CarError):
    """Base class of every coordination error (the Rust ``MultiError`` enum).

    Attributes:
        partial: The partial result of the coordination that raised, when there
            is one (e.g. a ``SupervisorResult`` holding the rounds completed
            before the supervisor failed); ``None`` otherwise.
    """

    partial: Any = None

    def with_partial(self, partial: Any) -> "MultiError":
        """Attach the work done before the failure and return ``self``."""
        self.partial = partial
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses format their text in __init__ from structured fields; rebuild
        # from the text and the fields instead of calling __init__ again, so
        # errors survive pickling across processes unchanged.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


_E = TypeVar("_E", bound="MultiError")


def _rebuild(cls: type[_E], text: str, state: dict[str, Any]) -> _E:
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.__dict__.update(state)
    return err


class AgentFailed(MultiError):
    """A load-bearing agent (supervisor, reducer, delegator main agent) failed.

    Args:
        name: The agent's name.
        msg: Why it failed (the runner's exception text).
    """

    def __init__(self, name: str, msg: str) -> None:
        self.name = name
        self.msg = msg
        super().__init__(f"agent '{name}' failed: {msg}")


class MailboxSend(MultiError):
    """A message could not be delivered: ``mailbox send error: {msg}``.

    Raised for an unknown recipient (``no agent '{to}'``) or a closed inbox.
    """

    def __init__(self, msg: str) -> None:
        self.msg = msg
        super().__init__(f"mailbox send error: {msg}")


class MailboxFull(MailboxSend):
    """A bounded inbox stayed full for the whole send timeout (backpressure ran out).

    Args:
        to: The recipient.
        capacity: The inbox capacity (messages).
        timeout_s: How long the sender waited, in seconds.
    """

    def __init__(self, to: str, capacity: int, timeout_s: float) -> None:
        self.to = to
        self.capacity = capacity
        self.timeout_s = timeout_s
        super().__init__(
            f"inbox of '{to}' is full ({capacity} messages) and stayed full for {timeout_s}s; "
            "the message was not delivered. Have the recipient drain its inbox, raise "
            "buffer_size, or send with a longer timeout_s"
        )


class MailboxTimeout(MultiError):
    """``inbox.recv(timeout_s=...)`` saw no message in time."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        super().__init__(f"mailbox recv timeout for agent '{agent}'")


class UnknownSpecialist(MultiError):
    """A specialist name that the delegator does not know."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown specialist: '{name}'")


class NoOutput(MultiError):
    """No agent produced output."""

    def __init__(self) -> None:
        super().__init__("no agents produced output")


class MaxRoundsExceeded(MultiError):
    """An iterative pattern ran out of rounds."""

    def __init__(self, n: int) -> None:
        self.n = n
        super().__init__(f"max rounds exceeded: {n}")


class BudgetExhausted(MultiError):
    """A load-bearing agent was denied by the coordination budget."""

    def __init__(self, msg: str) -> None:
        self.msg = msg
        super().__init__(f"coordination budget exhausted: {msg}")


class AdvisorExhausted(MultiError):
    """An advisor has been consulted ``max_uses`` times already."""

    def __init__(self, used: int, max_uses: int) -> None:
        self.used = used
        self.max_uses = max_uses
        super().__init__(f"advisor exhausted: used {used} of {max_uses} allowed consultations")


class BudgetError(MultiError):
    """Why the coordination budget refused to start an agent.

    Three kinds, told apart by ``kind``:

    * ``"exhausted"``: a token or cost limit was already crossed; text
      ``budget exhausted: {reason}``.
    * ``"agent_limit"``: starting another agent would exceed ``max_agents``;
      text ``agent limit reached: {started}/{max}``.
    * ``"turn_ceiling"``: the coordination's agents have used
      ``SharedInfra(max_turns=N)`` turns; text ``turn ceiling {N} reached``.

    Attributes:
        kind: ``"exhausted"``, ``"agent_limit"`` or ``"turn_ceiling"``.
        reason: The crossed limit (``exhausted`` only), e.g.
            ``total tokens 200 >= limit 150``.
        started: Agents started when refused (``agent_limit`` only).
        max_agents: The cap (``agent_limit`` only).
        max_turns: The ceiling (``turn_ceiling`` only).
        snapshot: The ``BudgetSnapshot`` at refusal time.
    """

    def __init__(
        self,
        kind: str,
        *,
        reason: str = "",
        started: int = 0,
        max_agents: int = 0,
        max_turns: int = 0,
        snapshot: Any = None,
    ) -> None:
        self.kind = kind
        self.reason = reason
        self.started = started
        self.max_agents = max_agents
        self.max_turns = max_turns
        self.snapshot = snapshot
        if kind == "exhausted":
            text = f"budget exhausted: {reason}"
        elif kind == "agent_limit":
            text = f"agent limit reached: {started}/{max_agents}"
        elif kind == "turn_ceiling":
            text = f"turn ceiling {max_turns} reached"
        else:  # pragma: no cover - programming error
            raise ValueError(f"BudgetError kind must be 'exhausted', 'agent_limit' or 'turn_ceiling', got {kind!r}")
        super().__init__(text)


class PoolAtCapacity(MultiError):
    """``AgentPool.try_spawn`` found every slot taken."""

    def __init__(self, running: int, max_concurrent: int) -> None:
        self.running = running
        self.max_concurrent = max_concurrent
        super().__init__(f"agent pool at capacity ({running}/{max_concurrent})")


class WorkerPoolGaveUp(MultiError):
    """The process executor's worker supervisor stopped the pool: workers died too often.

    (Named ``SupervisorGaveUp`` before 0.2: it is unrelated to the
    :class:`~carmulti.Supervisor` pattern; the old name still works, with a
    ``DeprecationWarning``.) The rule is OTP's restart intensity:

    More than ``max_restarts`` worker restarts happened within
    ``restart_period_s`` seconds (e.g. a runner that kills its process every
    time). Raised by ``run_agent``/``run_batch`` for every agent still waiting
    and every later call, until the executor is closed.

    Args:
        max_restarts: The restart limit.
        period_s: The window, in seconds.
        causes: Why each worker died, oldest first (one entry per death).
    """

    def __init__(self, max_restarts: int, period_s: float, causes: list[str]) -> None:
        self.max_restarts = max_restarts
        self.period_s = period_s
        self.causes = list(causes)
        listed = "; ".join(f"[{i + 1}] {c}" for i, c in enumerate(self.causes))
        super().__init__(
            f"supervisor gave up: more than {max_restarts} worker restarts within {period_s}s; "
            f"the worker pool is stopped. Causes: {listed}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerPoolGaveUp, (self.max_restarts, self.period_s, self.causes))


class ToolError(MultiError):
    """Raised by a :class:`~carmulti.ToolExecutor` to fail a tool call.

    The message becomes ``ActionResult.error`` verbatim.
    """


class WireProtocolError(MultiError):
    """A frame between coordinator and worker broke the wire protocol.

    Args:
        path: Where in the frame, as a JSON path (``$.jobs[3].spec.name``).
        msg: What was wrong, e.g. ``expected str, got int``.
    """

    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        self.msg = msg
        super().__init__(f"wire protocol error at `{path}`: {msg}")


class WorkspaceError(MultiError):
    """A workspace could not be provisioned (the message says why and how to fix it)."""


class ReplayDivergence(MultiError):
    """A replay asked for an agent run the journal has no record of (:class:`carmulti.testing.ReplayRunner`).

    Args:
        agent: The agent's name.
        reason: What differs from the recorded run (e.g. ``no recorded run of
            agent 'x' with this task; recorded tasks for 'x' start with ...``).
    """

    def __init__(self, agent: str, reason: str) -> None:
        self.agent = agent
        self.reason = reason
        super().__init__(f"replay diverged at agent '{agent}': {reason}")


_DEPRECATED = {"SupervisorGaveUp": ("WorkerPoolGaveUp", WorkerPoolGaveUp)}


def __getattr__(name: str) -> Any:
    """Deprecated names: still importable, with a ``DeprecationWarning`` naming the new one."""
    if name in _DEPRECATED:
        import warnings

        new, obj = _DEPRECATED[name]
        warnings.warn(f"carmulti.{name} is deprecated; use carmulti.{new}", DeprecationWarning, stacklevel=2)
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
