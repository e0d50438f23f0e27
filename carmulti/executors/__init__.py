"""Where agents run: in-process (:class:`LocalExecutor`) or in worker processes (:class:`ProcessExecutor`)."""

from .base import AgentJob, AgentRun, Executor
from .local import LocalExecutor
from .process import ProcessExecutor

__all__ = ["AgentJob", "AgentRun", "Executor", "LocalExecutor", "ProcessExecutor"]
