"""carcore: the compiled (Cython) core of carmulti.

There is no pure-Python fallback: carcore *is* the compiled thing (like uvloop).

Modules:
    carcore.state     StateStore, Overlay, StateTransition, check_json_value (compiled)
    carcore.eventlog  EventLog, Event, RecoveryReport, Subscription (compiled)
    carcore.budget    BudgetCounters (compiled, POSIX shared memory)
    carcore.errors    CarError, MergeConflictError, LogCorruptedError (pure Python)
"""

from __future__ import annotations

from carcore.budget import BudgetCounters
from carcore.errors import CarError, LogCorruptedError, MergeConflictError
from carcore.eventlog import Event, EventLog, RecoveryReport, Subscription
from carcore.state import Overlay, StateStore, StateTransition, check_json_value

__all__ = [
    "BudgetCounters",
    "CarError",
    "Event",
    "EventLog",
    "LogCorruptedError",
    "MergeConflictError",
    "Overlay",
    "RecoveryReport",
    "StateStore",
    "StateTransition",
    "Subscription",
    "check_json_value",
]
