"""Shared infrastructure of one coordination group (car-multi ``shared``).

:class:`SharedInfra` is the coordination: it owns the state store, the event
log, the policies, the budget, the agent timeout and the executor. Executors
see it only through the narrow ``carmulti.executors.Coordination`` protocol.

All agents run against one :class:`SharedInfra` see the same state store, write
to the same event log, are checked by the same policies and charge the same
budget; each agent gets its own :class:`~carmulti.Runtime` (own tools, executor
and idempotency cache). ``executor`` chooses where agents run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from carcore import EventLog, StateStore

from ._validate import int_at_least, seconds
from .budget import BudgetLimits, CoordinationBudget
from .durable import Journal
from .isolation import AgentContext
from .policy import PolicyEngine
from .runtime import Runtime
from .types import AgentOutput

if TYPE_CHECKING:
    from .executors.base import Executor

__all__ = ["SharedInfra"]

#: A journal's group commit: fdatasync at most once a second. Each fdatasync blocks the event loop
#: (~10 ms on the development VM's disk): at EventLog's default 10 ms interval a 100k-agent journaled
#: MapReduce spent about half its time in them. Every record is still written (write(2)) before its
#: agent's result returns, so a crash of the process loses nothing.
_JOURNAL_SYNC: dict[str, Any] = {"fsync": "batch", "batch_interval_s": 1.0, "batch_records": 1 << 30}


class SharedInfra:
    """State, log, policies, budget and executor shared by a coordination.

    Args:
        budget: Limits for the coordination budget (default unbounded).
        executor: Where agents run: ``None`` = in-process (``LocalExecutor``);
            ``ProcessExecutor(workers=N)`` = N worker processes.
        agent_timeout_s: Bound on every agent run, in seconds. On expiry the
            runner is cancelled and the agent's output gets
            ``error == f"timeout after {agent_timeout_s}s"``.
        state: Use this store instead of a fresh ``carcore.StateStore``.
        log: Use this event log instead of a fresh in-memory ``carcore.EventLog``
            (pass ``EventLog(path)`` for a durable journal).
        policies: Use this policy engine instead of a fresh one.
        max_turns: Run ceiling: once the coordination's agents have used this
            many turns in total (``AgentOutput.turns`` of every agent whose
            output was recorded, summed), no new agent starts; a refused agent is
            a budget-skipped output with ``error == f"budget skipped: turn
            ceiling {max_turns} reached"`` (a load-bearing agent raises
            ``BudgetExhausted``). ``None``: no ceiling. Agents already running
            finish, so the total may end above the ceiling by their turns (like
            the spend limits of ``budget``).
        journal: A durable run (README section "Durable runs"; :mod:`carmulti.durable`):
            the event log is the journal file at this path (``EventLog.open``
            when it exists: a torn tail is repaired, a damaged middle raises
            ``LogCorruptedError`` and the file is left as is; else a new
            ``EventLog(path)``; fsync ``"batch"`` at most once a second: a
            crash of the process loses no record, a crash of the machine at most
            the last second's). Every agent that succeeds is
            recorded there before its result reaches the pattern; running the
            same program again with the same journal replays the recorded agents
            without calling the runner (spend recorded, state writes applied
            again, budget slots taken as before) and runs only the rest.
            :meth:`aclose` closes the journal (releasing its writer lock).

    Attributes:
        max_turns: The run ceiling, or ``None``.
        turns_used: Turns recorded so far (read-only).
        journal: The :class:`~carmulti.durable.Journal` of a journaled
            coordination, or ``None``.
        replayed: Agents replayed from the journal so far (read-only; 0 without one).

    Raises:
        ValueError: ``agent_timeout_s`` is not a finite number of seconds > 0 (nor None);
            ``max_turns`` is not an int >= 0 (nor None; a bool never is);
            ``journal`` and ``log`` are both given.
        TypeError: ``budget`` is not a ``BudgetLimits``; ``journal`` is not a
            str or path.
        LogCorruptedError: the journal is damaged before its last record (its
            ``offset`` names the first bad byte).
        BlockingIOError: another open journal (this process or another) holds it.

    Usage::

        infra = SharedInfra()                                            # in-process
        infra = SharedInfra(budget=BudgetLimits(max_agents=100))         # capped
        async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra: ...
        infra = SharedInfra(max_turns=200)                               # at most ~200 turns in the run
        infra = SharedInfra(journal="run.journal")                       # resumable: rerun to finish
    """

    def __init__(self, *, budget: BudgetLimits | None = None, executor: "Executor | None" = None,
                 agent_timeout_s: float | None = None, state: StateStore | None = None,
                 log: EventLog | None = None, policies: PolicyEngine | None = None,
                 max_turns: int | None = None, journal: "str | os.PathLike[str] | None" = None) -> None:
        seconds(agent_timeout_s, "SharedInfra agent_timeout_s", allow_none=True)
        self.max_turns: int | None = int_at_least(max_turns, 0, "SharedInfra max_turns", allow_none=True)
        self._turns_used = 0
        if budget is not None and not isinstance(budget, BudgetLimits):
            raise TypeError(f"SharedInfra(budget=...) takes a BudgetLimits, got {type(budget).__name__}")
        if journal is not None:
            if log is not None:
                raise ValueError("SharedInfra takes journal=PATH or log=EventLog(...), not both: journal= opens "
                                 "(or creates) the event log at PATH")
            if not isinstance(journal, (str, os.PathLike)):
                raise TypeError(f"SharedInfra(journal=...) takes a str or os.PathLike, got {type(journal).__name__}")
        self.state: StateStore = state if state is not None else StateStore()
        self.policies: PolicyEngine = policies if policies is not None else PolicyEngine()
        self.budget: CoordinationBudget = CoordinationBudget(budget)
        self._owns_budget = True  # False after with_shared_budget(): someone else closes it
        self.journal: Journal | None = None
        if journal is not None:
            path = os.fspath(journal)
            try:
                log = (EventLog.open(path, **_JOURNAL_SYNC) if os.path.exists(path) else EventLog(path, **_JOURNAL_SYNC))
                try:
                    self.journal = Journal(log)
                except BaseException:
                    log.close()
                    raise
            except BaseException:
                self.budget.close()
                raise
        self.log: EventLog = log if log is not None else EventLog()
        if executor is None:
            from .executors.local import LocalExecutor

            executor = LocalExecutor()
        self.executor = executor
        self.agent_timeout_s = agent_timeout_s
        self._closed = False

    # -- builders --------------------------------------------------------------
    def with_budget(self, limits: BudgetLimits) -> "SharedInfra":
        """Replace the budget with a fresh one for ``limits``; returns ``self``.

        The previous budget is closed only if this infra created it.
        """
        old, owned = self.budget, self._owns_budget
        self.budget = CoordinationBudget(limits)
        self._owns_budget = True
        if owned:
            old.close()
        return self

    def with_shared_budget(self, budget: CoordinationBudget) -> "SharedInfra":
        """Use a pre-built budget, possibly shared with other infras; returns ``self``.

        This infra never closes a shared budget: whoever created it calls
        ``budget.close()`` once every infra using it is done.
        """
        if not isinstance(budget, CoordinationBudget):
            raise TypeError(f"with_shared_budget takes a CoordinationBudget, got {type(budget).__name__}")
        old, owned = self.budget, self._owns_budget
        self.budget = budget
        self._owns_budget = False
        if owned and old is not budget:
            old.close()
        return self

    # -- runtimes --------------------------------------------------------------
    def make_runtime(self, agent: str | None = None) -> Runtime:
        """A runtime over the shared state, log and policies (own tools, executor, cache).

        Args:
            agent: Name stamped on the runtime's events.
        """
        return Runtime(self.state, self.log, self.policies, agent=agent, budget=self.budget)

    def make_isolated_runtime(self, agent_name: str) -> tuple[Runtime, AgentContext]:
        """A runtime whose state view is a copy-on-write overlay for ``agent_name``.

        Returns:
            ``(runtime, context)``; merge with ``context.merge_to_parent()`` on success.
        """
        ctx = AgentContext(agent_name, self.state)
        return Runtime(ctx.local_state, self.log, self.policies, agent=agent_name, budget=self.budget), ctx

    # -- budget ----------------------------------------------------------------
    def begin_agent(self) -> None:
        """Reserve one budget slot right before a spawn.

        Raises:
            BudgetError: a spend limit is crossed or ``max_agents`` is reached.
        """
        self.budget.begin_agent()

    def record_output(self, output: AgentOutput) -> None:
        """Add ``output.tokens`` (if any) to the budget and ``output.turns`` to :attr:`turns_used`.

        The patterns call it once per agent output they accept (``carmulti.lifecycle``),
        in the coordinator, whichever executor ran the agent.
        """
        self.budget.record(output.tokens)
        self._turns_used += output.turns

    @property
    def turns_used(self) -> int:
        """Turns of the agents recorded so far (the count ``max_turns`` is checked against)."""
        return self._turns_used

    @property
    def replayed(self) -> int:
        """Agents replayed from the journal so far (``journal=``); 0 without a journal."""
        return 0 if self.journal is None else self.journal.replayed

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> "SharedInfra":
        """Start the executor (workers); optional, executors also start lazily."""
        await self.executor.start()
        return self

    async def aclose(self) -> None:
        """Stop the executor, flush the event log (it stays open; a ``journal=``
        is closed, releasing its writer lock) and release the budget's shared
        memory (unless the budget is shared: see :meth:`with_shared_budget`).
        Idempotent.

        The state store and event log stay readable afterwards.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await self.executor.aclose()
        finally:
            if not self.log.closed:
                if self.journal is not None:
                    self.log.close()  # synced; another SharedInfra(journal=PATH) may open it now
                else:
                    self.log.flush()  # a journaled log's last batch reaches the disk
            if self._owns_budget:
                self.budget.close()

    async def __aenter__(self) -> "SharedInfra":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"<SharedInfra executor={type(self.executor).__name__} state_keys={len(self.state)} "
                f"events={len(self.log)} budget={self.budget.limits}>")
