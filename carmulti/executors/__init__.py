"""Where agents run: in-process (:class:`LocalExecutor`) or in worker processes (:class:`ProcessExecutor`)."""

from .base import IDEMPOTENT_METADATA_KEY, AgentJob, AgentRun, Executor
from .local import LocalExecutor
from .process import ProcessExecutor

__all__ = ["IDEMPOTENT_METADATA_KEY", "AgentJob", "AgentRun", "Executor", "LocalExecutor", "ProcessExecutor"]
