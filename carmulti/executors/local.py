"""In-process executor: each agent is a coroutine on the coordinator's event loop.

Owns nothing but the choice of *where*: every job goes through the shared agent
run (:func:`carmulti.executors.agent_run.run_agent`) with the coordination's own
state, log, policies and budget as its environment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Coroutine, Sequence

from .. import _validate as V
from ..mailbox import Mailbox
from .agent_run import AgentEnvironment, run_agent
from .base import AgentJob, AgentRun, Coordination
from .gcpace import paced

if TYPE_CHECKING:
    from ..runner import AgentRunner

__all__ = ["LocalExecutor"]

log = logging.getLogger("carmulti.executors.local")


class LocalExecutor:
    """Runs agents as asyncio coroutines in the current process (the default executor).

    Blocking code: agents share one event loop, so a runner that blocks it
    (``time.sleep``, CPU-bound work, a synchronous HTTP call) stalls every agent
    and cannot be interrupted by ``agent_timeout_s``. When one step of a runner
    outlasts its timeout, a ``RuntimeWarning`` names the agent and its output is
    the timeout error (``timeout after {n}s``). Run blocking calls with
    ``await asyncio.to_thread(...)``, or run the agents on
    :class:`~carmulti.ProcessExecutor`, which kills a worker whose loop stays
    blocked past an agent's timeout.

    Args:
        cancel_grace_s: After an agent's timeout, how long to wait for the
            cancelled runner to finish, in seconds. A runner that ignores
            cancellation longer than this is abandoned (it keeps running on the
            loop until :meth:`aclose`; the process executor kills such a runner
            with its worker).

    Raises:
        ValueError: ``cancel_grace_s`` is not a number of seconds > 0.
    """

    def __init__(self, *, cancel_grace_s: float = 1.0) -> None:
        self.cancel_grace_s = float(V.seconds(cancel_grace_s, "LocalExecutor cancel_grace_s"))
        self._abandoned: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Nothing to start; present for the executor protocol."""

    async def aclose(self) -> None:
        """Cancel runners abandoned after a timeout, if any are still running."""
        tasks, self._abandoned = self._abandoned, set()
        for t in tasks:
            t.cancel()

    async def __aenter__(self) -> "LocalExecutor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob],
                        coordination: Coordination) -> list[AgentRun]:
        """Run ``jobs`` concurrently; results in job order (one environment for the batch)."""
        if len(jobs) <= 1:
            return [await self.run_agent(runner, jobs[0], coordination)] if jobs else []
        env = self._environment(coordination)
        with paced(len(jobs)):
            return list(await asyncio.gather(*_tasks(asyncio.get_running_loop().create_task, [
                run_agent(runner, job, env, mailbox=job.mailbox if job.mailbox is not None else Mailbox._fresh(),
                          tool_executor=job.tool_executor) for job in jobs])))

    def run_agent(self, runner: "AgentRunner", job: AgentJob,
                  coordination: Coordination) -> Coroutine[Any, Any, AgentRun]:
        """Run one agent here (await the result); never raises for agent failures (see ``executors.base``)."""
        return run_agent(runner, job, self._environment(coordination),
                         mailbox=job.mailbox if job.mailbox is not None else Mailbox._fresh(),
                         tool_executor=job.tool_executor)

    def _environment(self, coordination: Coordination) -> AgentEnvironment:
        return AgentEnvironment(coordination.state, coordination.log, coordination.policies, coordination.budget,
                                coordination.agent_timeout_s, self.cancel_grace_s, None, self._abandon)

    def _abandon(self, task: "asyncio.Task[Any]", name: str) -> None:
        log.warning("agent %r ignored cancellation for %.1fs after its timeout; abandoned (cancelled again at "
                    "aclose)", name, self.cancel_grace_s)
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)


def _tasks(create_task: Any, coros: list[Coroutine[Any, Any, AgentRun]]) -> list["asyncio.Task[AgentRun]"]:
    """One task per coroutine, made here rather than by ``asyncio.gather``.

    ``gather`` given coroutines runs the Python checks of ``asyncio.ensure_future`` on each
    (``isfuture`` alone was 6% of the samples while 500,000 mappers started, py-spy). Measured on
    this project's 2-core machine: ``gather`` of 10,000 trivial coroutines against ``gather`` of
    their tasks made beforehand, 2.9 against 2.7 us an agent (medians of 8); starting each of 300,000
    sleeping mappers of a local ``MapReduce`` with all of them in flight, 8.5 against 8.0 us (medians
    of 4 alternating runs; ``/tmp`` scripts, see the closing note of issue 13). As with ``gather``'s
    own tasks, a task destroyed while pending (its loop closed under it) is not reported one by one.
    """
    tasks = [create_task(c) for c in coros]
    for t in tasks:
        t._log_destroy_pending = False
    return tasks
