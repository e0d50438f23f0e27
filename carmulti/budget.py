"""Coordination budget: token, dollar and agent-count limits shared by every agent.

Port of car-multi ``budget.rs`` (0.21+). The runtime does not meter tokens: it
sums what runners report (:meth:`CoordinationBudget.record`) and gates the
*next* spawn on the running total (:meth:`CoordinationBudget.begin_agent`).
"Once a limit is crossed, no new agent is started." Overshoot is bounded by the
spend of the agents already in flight.

The counters live in a ``carcore.BudgetCounters`` shared-memory block updated
with C11 atomics, so worker processes charge the same budget lock-free, and
``max_agents`` is a hard cap: a compare-and-swap reservation never lets the
started count exceed it, even under concurrent ``begin_agent()`` calls from
several processes. Slots are not refunded (a failed agent still counts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from carcore import BudgetCounters

from ._validate import int_at_least, number_at_least
from .errors import BudgetError
from .types import AgentOutput, TokenAccounting

__all__ = [
    "BUDGET_SKIP_PREFIX",
    "BudgetLimits",
    "BudgetSnapshot",
    "CoordinationBudget",
    "budget_skipped_output",
    "is_budget_skipped",
]

#: Error prefix that marks an agent the budget refused to start.
BUDGET_SKIP_PREFIX = "budget skipped: "

_IN, _OUT, _COST, _AGENTS = 0, 1, 2, 3
_SLOTS = 4

_swept_in_pid: int | None = None  # the process that last swept stale segments


def _sweep_stale_once() -> None:
    """Remove, once per process, the budget segments of processes that died without closing them.

    A coordinator killed with ``kill -9`` never unlinks its ``/dev/shm/carmulti-{pid}-*``
    segment; nothing else would. Costs one ``listdir`` of ``/dev/shm`` and one ``kill(pid, 0)``
    per ``carmulti-*`` entry; a forked child sweeps again (it is a new process). Errors are
    ignored: sweeping is housekeeping and never stops a budget from being created.
    """
    global _swept_in_pid
    pid = os.getpid()
    if _swept_in_pid == pid:
        return
    _swept_in_pid = pid
    try:
        BudgetCounters.sweep_stale()
    except OSError:  # pragma: no cover - /dev/shm unreadable: nothing to sweep
        pass


@dataclass(frozen=True)
class BudgetLimits:
    """Optional ceilings; ``None`` means unlimited.

    Attributes:
        max_input_tokens: Prompt tokens, summed over agents.
        max_output_tokens: Completion tokens, summed over agents.
        max_total_tokens: Input + output tokens.
        max_cost_usd: Dollars (US), summed over agents.
        max_agents: Hard cap on agents *started* (regardless of spend).

    Usage::

        BudgetLimits()                        # unbounded: a no-op
        BudgetLimits(max_total_tokens=10_000) # stop starting agents past 10k tokens
        BudgetLimits(max_cost_usd=0.50)       # ... past 50 cents
        BudgetLimits(max_agents=8)            # never more than 8 agents started

    Raises:
        ValueError: a token or agent limit is not an int >= 0, or ``max_cost_usd``
            not a finite number >= 0 (a bool is neither); the message names the field.
    """

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_total_tokens: int | None = None
    max_cost_usd: float | None = None
    max_agents: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_input_tokens", "max_output_tokens", "max_total_tokens", "max_agents"):
            int_at_least(getattr(self, name), 0, f"BudgetLimits.{name}", allow_none=True)
        number_at_least(self.max_cost_usd, 0, "BudgetLimits.max_cost_usd", unit="dollars", allow_none=True)

    @property
    def is_unbounded(self) -> bool:
        """True when every limit is ``None``."""
        return (self.max_input_tokens is None and self.max_output_tokens is None and self.max_total_tokens is None
                and self.max_cost_usd is None and self.max_agents is None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_input_tokens": self.max_input_tokens,
            "max_output_tokens": self.max_output_tokens,
            "max_total_tokens": self.max_total_tokens,
            "max_cost_usd": self.max_cost_usd,
            "max_agents": self.max_agents,
        }


def _crossed(value: float, limit: float | None) -> bool:
    """The one place that decides "crossed": ``value >= limit`` (flip to ``>`` here if ever needed)."""
    return limit is not None and value >= limit


@dataclass(frozen=True)
class BudgetSnapshot:
    """Point-in-time view of a budget.

    Attributes:
        input_tokens, output_tokens, total_tokens: Reported tokens so far.
        cost_usd: Reported dollars so far.
        agents_started: Agents admitted by ``begin_agent`` (never refunded).
        limits: The limits.
        exhausted: A *spend* limit (tokens or cost) is crossed. Does not
            reflect ``max_agents``.
    """

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float
    agents_started: int
    limits: BudgetLimits
    exhausted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "agents_started": self.agents_started,
            "limits": self.limits.to_dict(),
            "exhausted": self.exhausted,
        }


class CoordinationBudget:
    """Shared spend/agent budget on lock-free shared-memory counters.

    The shared-memory block is created here, in the constructor, so every copy
    of this object -- in threads, in processes forked from this one, and in
    processes it is pickled to (they attach by name) -- charges the same
    counters. It is unlinked by :meth:`close` in the creating process
    (``SharedInfra.aclose`` calls it; a forked child never unlinks it). After
    close, reads return the final values; spending raises ``ValueError``.

    The first budget created in a process also removes, once, the
    ``/dev/shm/carmulti-{pid}-*`` segments left behind by processes that died
    without closing theirs (:meth:`carcore.BudgetCounters.sweep_stale`).

    Args:
        limits: The ceilings (default: unbounded).

    Raises:
        TypeError: ``limits`` is not a :class:`BudgetLimits` (or ``None``).
        OSError: the shared-memory block cannot be created (``/dev/shm`` full or
            not writable).
    """

    def __init__(self, limits: BudgetLimits | None = None) -> None:
        if limits is not None and not isinstance(limits, BudgetLimits):
            raise TypeError(f"CoordinationBudget(limits) takes a BudgetLimits, got {type(limits).__name__}")
        _sweep_stale_once()
        self.limits = limits if limits is not None else BudgetLimits()
        self._final: tuple[int, int, float, int] | None = None
        self._counters: BudgetCounters | None = BudgetCounters(_SLOTS)

    @classmethod
    def unbounded(cls) -> "CoordinationBudget":
        return cls(BudgetLimits())

    @classmethod
    def attach(cls, limits: BudgetLimits, name: str) -> "CoordinationBudget":
        """Attach to a budget created in another process (by its shared-memory ``name``).

        The attached copy never unlinks the block; its :meth:`close` only unmaps it.

        Raises:
            FileNotFoundError: no block named ``name`` exists (its owner closed it).
            ValueError: ``name`` is not a budget counters block.
        """
        self = cls.__new__(cls)
        self.limits = limits
        self._final = None
        self._counters = BudgetCounters.attach(name)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (CoordinationBudget.attach, (self.limits, self.counters.name))

    @property
    def counters(self) -> BudgetCounters:
        """The shared-memory counters.

        Raises:
            ValueError: the budget is closed (its counters were released).
        """
        c = self._counters
        if c is None:
            raise ValueError("this CoordinationBudget is closed; its counters were unlinked "
                             "(create a new budget, or close it only after the last agent)")
        return c

    # -- reading ---------------------------------------------------------------
    def _values(self) -> tuple[int, int, float, int]:
        if self._final is not None:
            return self._final
        c = self._counters
        if c is None:
            return (0, 0, 0.0, 0)
        return (c.load(_IN), c.load(_OUT), c.load_f64(_COST), c.load(_AGENTS))

    def _exhausted_reason(self, vals: tuple[int, int, float, int]) -> str | None:
        lim = self.limits
        i, o, cost, _ = vals
        if _crossed(i, lim.max_input_tokens):
            return f"input tokens {i} >= limit {lim.max_input_tokens}"
        if _crossed(o, lim.max_output_tokens):
            return f"output tokens {o} >= limit {lim.max_output_tokens}"
        if _crossed(i + o, lim.max_total_tokens):
            return f"total tokens {i + o} >= limit {lim.max_total_tokens}"
        if _crossed(cost, lim.max_cost_usd):
            return f"cost ${cost:.6f} >= limit ${lim.max_cost_usd}"
        return None

    def snapshot(self) -> BudgetSnapshot:
        """Current totals and whether a spend limit is crossed."""
        vals = self._values()
        i, o, cost, agents = vals
        return BudgetSnapshot(i, o, i + o, cost, agents, self.limits, self._exhausted_reason(vals) is not None)

    @property
    def exhausted(self) -> bool:
        """A spend limit is crossed (cheap check for runners between model calls)."""
        return self._exhausted_reason(self._values()) is not None

    # -- spending --------------------------------------------------------------
    def begin_agent(self) -> None:
        """Reserve one agent slot, immediately before a spawn.

        Checks, in order: (1) a spend limit is already crossed; (2) atomically,
        ``agents_started < max_agents`` then ``agents_started += 1``.

        Raises:
            BudgetError: ``kind="exhausted"`` (text ``budget exhausted: {reason}``)
                or ``kind="agent_limit"`` (text ``agent limit reached: {started}/{max}``).
                Nothing is reserved when it raises.
        """
        if self.begin_agents(1):  # no limit: nothing to check
            return
        lim = self.limits
        reason = self._exhausted_reason(self._values())
        if reason is not None:
            raise BudgetError("exhausted", reason=reason, snapshot=self.snapshot())
        if lim.max_agents is None:
            self.counters.add(_AGENTS, 1)
        elif not self.counters.reserve(_AGENTS, 1, lim.max_agents):
            started = self.counters.load(_AGENTS)
            raise BudgetError("agent_limit", started=started, max_agents=lim.max_agents, snapshot=self.snapshot())

    def begin_agents(self, n: int) -> bool:
        """Reserve ``n`` agent slots at once when no limit can refuse one (every limit ``None``).

        One atomic add instead of ``n`` calls of :meth:`begin_agent` (a parallel round of a big
        fan-out); the counters end the same.

        Returns:
            True when the ``n`` slots are reserved; False, with nothing reserved, when a limit is
            set (then each agent must go through :meth:`begin_agent`).
        """
        if not self.limits.is_unbounded:
            return False
        self.counters.add(_AGENTS, n)
        return True

    def record(self, tokens: TokenAccounting | None) -> None:
        """Add one agent's reported spend (``None`` adds nothing).

        Token totals saturate at ``2**63 - 1`` (they never overflow: a total that
        large crosses every limit).

        Raises:
            ValueError: negative token counts or a negative/NaN cost.
            OverflowError: one count does not fit in 64 bits (executors refuse
                such an output before it is recorded).
        """
        if tokens is None:
            return
        i, o, cost = tokens.input_tokens, tokens.output_tokens, tokens.cost_usd
        if i < 0 or o < 0 or not (cost >= 0):
            raise ValueError(f"reported spend must be non-negative, got input={i} output={o} cost_usd={cost}")
        c = self.counters
        if i:
            c.add_saturating(_IN, int(i))  # totals saturate at 2**63 - 1 (past every limit), never raise
        if o:
            c.add_saturating(_OUT, int(o))
        if cost:
            c.add_f64(_COST, float(cost))

    def record_output(self, output: AgentOutput) -> None:
        """``record(output.tokens)``."""
        self.record(output.tokens)

    def close(self) -> None:
        """Freeze the totals and release the shared memory (owner unlinks it). Idempotent."""
        if self._final is None:
            self._final = self._values()
        c, self._counters = self._counters, None
        if c is not None:
            c.close()

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"<CoordinationBudget total_tokens={s.total_tokens} cost_usd={s.cost_usd} agents_started={s.agents_started} limits={self.limits}>"


def budget_skipped_output(name: str, err: BaseException | str) -> AgentOutput:
    """The output recorded for an agent the budget refused to start.

    ``error`` is ``"budget skipped: " + str(err)``; everything else is empty/zero.
    """
    return AgentOutput(name=name, error=BUDGET_SKIP_PREFIX + str(err))


def is_budget_skipped(output: AgentOutput) -> bool:
    """True iff ``output.error`` starts with ``"budget skipped: "``."""
    return output.error is not None and output.error.startswith(BUDGET_SKIP_PREFIX)
