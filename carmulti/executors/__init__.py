"""Where agents run: in-process (:class:`LocalExecutor`) or in worker processes."""

from .base import AgentJob, AgentRun, Executor
from .local import LocalExecutor

__all__ = ["AgentJob", "AgentRun", "Executor", "LocalExecutor"]
