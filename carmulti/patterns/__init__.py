"""The coordination patterns: they decide *what* runs; executors decide *where*."""

from .delegator import DELEGATE_SCHEMA, DelegateTool, DelegationRecord, Delegator, DelegatorResult
from .map_reduce import MapReduce, MapReduceResult
from .pipeline import Pipeline, PipelineResult
from .supervisor import Supervisor, SupervisorResult
from .swarm import Swarm, SwarmMode, SwarmResult
from .vote import Vote, VoteResult, normalize_vote, tally

__all__ = [
    "DELEGATE_SCHEMA",
    "DelegateTool",
    "DelegationRecord",
    "Delegator",
    "DelegatorResult",
    "MapReduce",
    "MapReduceResult",
    "Pipeline",
    "PipelineResult",
    "Supervisor",
    "SupervisorResult",
    "Swarm",
    "SwarmMode",
    "SwarmResult",
    "Vote",
    "VoteResult",
    "normalize_vote",
    "tally",
]
