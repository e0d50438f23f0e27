"""The coordination patterns: they decide *what* runs; executors decide *where*."""

from .adversarial_review import (
    SEVERITY_INCONCLUSIVE,
    AdversarialReview,
    AdversarialReviewResult,
    ReviewFinding,
)
from .advisor import Advisor, AdvisorResult, AdvisorVerdict
from .delegator import DELEGATE_SCHEMA, DelegateTool, DelegationRecord, Delegator, DelegatorResult
from .fleet import Fleet, FleetResult
from .map_reduce import MapReduce, MapReduceResult
from .pipeline import Pipeline, PipelineResult
from .supervisor import Supervisor, SupervisorResult
from .spawn_subtask import (
    DEFAULT_SUBAGENT_PROMPT,
    SPAWN_SUBTASK_TOOL,
    SpawnSubtask,
    SpawnSubtaskResult,
    SpawnSubtaskTool,
    SubtaskRecord,
    spawn_subtask_schema,
)
from .swarm import Swarm, SwarmMode, SwarmResult
from .tournament import MatchResult, Tournament, TournamentResult
from .vote import Vote, VoteResult, normalize_vote, tally

__all__ = [
    "AdversarialReview",
    "AdversarialReviewResult",
    "Advisor",
    "AdvisorResult",
    "AdvisorVerdict",
    "DEFAULT_SUBAGENT_PROMPT",
    "DELEGATE_SCHEMA",
    "DelegateTool",
    "DelegationRecord",
    "Delegator",
    "DelegatorResult",
    "Fleet",
    "FleetResult",
    "MapReduce",
    "MapReduceResult",
    "MatchResult",
    "Pipeline",
    "PipelineResult",
    "ReviewFinding",
    "SEVERITY_INCONCLUSIVE",
    "SPAWN_SUBTASK_TOOL",
    "SpawnSubtask",
    "SpawnSubtaskResult",
    "SpawnSubtaskTool",
    "SubtaskRecord",
    "Supervisor",
    "SupervisorResult",
    "Swarm",
    "SwarmMode",
    "SwarmResult",
    "Tournament",
    "TournamentResult",
    "Vote",
    "VoteResult",
    "normalize_vote",
    "spawn_subtask_schema",
    "tally",
]
