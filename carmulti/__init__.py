"""carmulti: coordinate many LLM agents at once.

A Python port of the Rust crate car-multi (Common Agent Runtime) on a Cython
core (:mod:`carcore`). The caller supplies an :class:`AgentRunner` that drives
the model; carmulti decides when and how agents run: :class:`Swarm` (parallel,
sequential, debate), :class:`Pipeline`, :class:`Supervisor`, :class:`Delegator`,
:class:`MapReduce`, :class:`Vote`, :class:`Tournament`, :class:`Fleet`,
:class:`AdversarialReview`, :class:`Advisor` and :class:`SpawnSubtask`, over a
:class:`SharedInfra` (state store, event log, policies, budget, executor).

Everything public is importable from here; the implementation lives in modules.
"""

import inspect
from typing import Any

from ._run import run
from .actions import (
    Action,
    ActionProposal,
    ActionResult,
    ActionStatus,
    ActionType,
    FailureBehavior,
    Precondition,
    ProposalResult,
)
from .budget import BudgetLimits, BudgetSnapshot, CoordinationBudget, budget_skipped_output, is_budget_skipped
from .errors import (
    AdvisorExhausted,
    AgentFailed,
    BudgetError,
    BudgetExhausted,
    CarError,
    LogCorruptedError,
    MailboxFull,
    MailboxSend,
    MailboxTimeout,
    MaxRoundsExceeded,
    MergeConflictError,
    MultiError,
    NoOutput,
    PoolAtCapacity,
    ReplayDivergence,
    ToolError,
    UnknownSpecialist,
    WireProtocolError,
    WorkerPoolGaveUp,
)
from .executors import IDEMPOTENT_METADATA_KEY, LocalExecutor, ProcessExecutor, RayExecutor
from .infra import SharedInfra
from .isolation import AgentContext, TaskScope
from .mailbox import AgentId, AgentMessage, Inbox, Mailbox, MessageRouter, PooledMailbox
from .patterns import (
    DEFAULT_SUBAGENT_PROMPT,
    DELEGATE_SCHEMA,
    SPAWN_SUBTASK_TOOL,
    AdversarialReview,
    AdversarialReviewResult,
    Advisor,
    AdvisorResult,
    AdvisorVerdict,
    DelegationRecord,
    Delegator,
    DelegatorResult,
    Fleet,
    FleetResult,
    MapReduce,
    MapReduceResult,
    MatchResult,
    Pipeline,
    PipelineResult,
    ReviewFinding,
    SpawnSubtask,
    SpawnSubtaskResult,
    SubtaskRecord,
    Supervisor,
    SupervisorResult,
    Swarm,
    SwarmMode,
    SwarmResult,
    Tournament,
    TournamentResult,
    Vote,
    VoteResult,
    normalize_vote,
)
from .policy import PolicyEngine, PolicyViolation
from .pool import AgentPool
from .runner import AgentRunner
from .runtime import Runtime, ToolExecutor
from .types import AgentOutput, AgentSpec, Message, TokenAccounting, truncate
from .workspace import WORKSPACE_METADATA_KEY, AgentWorkspace, WorkspaceConfig, WorkspaceError, WorkspaceMode

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ActionProposal",
    "ActionResult",
    "ActionStatus",
    "ActionType",
    "AdversarialReview",
    "AdversarialReviewResult",
    "Advisor",
    "AdvisorExhausted",
    "AdvisorResult",
    "AdvisorVerdict",
    "AgentContext",
    "AgentFailed",
    "AgentId",
    "AgentMessage",
    "AgentOutput",
    "AgentPool",
    "AgentRunner",
    "AgentSpec",
    "AgentWorkspace",
    "BudgetError",
    "BudgetExhausted",
    "BudgetLimits",
    "BudgetSnapshot",
    "CarError",
    "CoordinationBudget",
    "DEFAULT_SUBAGENT_PROMPT",
    "DELEGATE_SCHEMA",
    "DelegationRecord",
    "Delegator",
    "DelegatorResult",
    "FailureBehavior",
    "Fleet",
    "FleetResult",
    "IDEMPOTENT_METADATA_KEY",
    "Inbox",
    "LocalExecutor",
    "LogCorruptedError",
    "Mailbox",
    "MailboxFull",
    "MailboxSend",
    "MailboxTimeout",
    "MapReduce",
    "MapReduceResult",
    "MatchResult",
    "MaxRoundsExceeded",
    "MergeConflictError",
    "Message",
    "MessageRouter",
    "MultiError",
    "NoOutput",
    "Pipeline",
    "PipelineResult",
    "PolicyEngine",
    "PolicyViolation",
    "PoolAtCapacity",
    "PooledMailbox",
    "Precondition",
    "ProcessExecutor",
    "ProposalResult",
    "RayExecutor",
    "ReplayDivergence",
    "ReviewFinding",
    "Runtime",
    "SPAWN_SUBTASK_TOOL",
    "SharedInfra",
    "SpawnSubtask",
    "SpawnSubtaskResult",
    "SubtaskRecord",
    "Supervisor",
    "SupervisorResult",
    "Swarm",
    "SwarmMode",
    "SwarmResult",
    "TaskScope",
    "TokenAccounting",
    "ToolError",
    "ToolExecutor",
    "Tournament",
    "TournamentResult",
    "UnknownSpecialist",
    "Vote",
    "VoteResult",
    "WORKSPACE_METADATA_KEY",
    "WireProtocolError",
    "WorkerPoolGaveUp",
    "WorkspaceConfig",
    "WorkspaceError",
    "WorkspaceMode",
    "budget_skipped_output",
    "is_budget_skipped",
    "normalize_vote",
    "run",
    "truncate",
]


#: Names that moved, still importable from here with a ``DeprecationWarning``: old name -> (module, new name).
_MOVED = {
    "SupervisorGaveUp": ("carmulti.errors", "WorkerPoolGaveUp"),
    "DelegatingExecutor": ("carmulti.patterns", "DelegateTool"),
    "AgentJob": ("carmulti.executors", "AgentJob"),
    "AgentRun": ("carmulti.executors", "AgentRun"),
    "Executor": ("carmulti.executors", "Executor"),
}


def __getattr__(name: str) -> Any:
    """Moved names (see ``_MOVED``): importable for one more release, with a ``DeprecationWarning``."""
    if name in _MOVED:
        import importlib
        import warnings

        module, new = _MOVED[name]
        warnings.warn(f"carmulti.{name} moved: use {module}.{new}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new)
    raise AttributeError(f"module 'carmulti' has no attribute {name!r}")


def _fix_module_metadata() -> None:
    """Show public objects as ``carmulti.X`` in reprs, tracebacks and pickles (trio, httpx)."""
    g = globals()
    for name in __all__:
        obj = g[name]
        mod = getattr(obj, "__module__", None)
        if isinstance(mod, str) and mod.startswith("carmulti.") and (isinstance(obj, type) or inspect.isfunction(obj)):
            obj.__module__ = "carmulti"


_fix_module_metadata()
del _fix_module_metadata
del inspect
