"""Where agents run, and the interface an executor implements.

* :class:`LocalExecutor` -- coroutines on the caller's event loop (the default).
* :class:`ProcessExecutor` -- a pool of worker processes connected by ZeroMQ.
* :class:`RayExecutor` -- the same workers as async Ray actors across a cluster (extra ``ray``).

For executor authors: the seam (:class:`AgentJob`, :class:`AgentRun`,
:class:`Coordination`, :class:`Executor`) and the one agent run every executor
uses (:func:`run_agent` with an :class:`AgentEnvironment`). A new executor
implements ``Executor`` and calls ``run_agent`` wherever it runs a job; see
``docs/ARCHITECTURE.md``.
"""

from .agent_run import AgentEnvironment, run_agent
from .base import IDEMPOTENT_METADATA_KEY, AgentJob, AgentRun, Coordination, Executor
from .local import LocalExecutor
from .process import ProcessExecutor
from .ray import RayExecutor

__all__ = ["IDEMPOTENT_METADATA_KEY", "AgentEnvironment", "AgentJob", "AgentRun", "Coordination", "Executor",
           "LocalExecutor", "ProcessExecutor", "RayExecutor", "run_agent"]
