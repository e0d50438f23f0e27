"""AgentPool: bounded-concurrency spawning with fan-out / fan-in and per-agent inboxes.

Port of the seed ``AgentPool`` + ``MessageRouter`` design (seed 004), with its
defects fixed:

* at capacity, :meth:`AgentPool.spawn` queues the agent (FIFO) instead of
  failing; :meth:`AgentPool.try_spawn` keeps the rejecting behaviour with the
  seed's text ``agent pool at capacity ({running}/{max})``;
* each agent's inbox is handed to its runner (``mailbox.inbox``), so messages
  sent to a pooled agent arrive (the seed dropped the receiver);
* an agent that crashes still yields its id, with an error output.

The messaging half of the seed (:class:`~carmulti.MessageRouter`,
:class:`~carmulti.AgentMessage`, :class:`~carmulti.PooledMailbox`) lives in
:mod:`carmulti.mailbox`, on the same implementation as :class:`~carmulti.Mailbox`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from typing import TYPE_CHECKING, Iterable

from . import _strings as S
from ._validate import int_at_least
from .errors import PoolAtCapacity
from .executors.base import AgentJob
from .lifecycle import conclude, failed_output, reserve, run_one
from .mailbox import AgentId, MessageRouter, PooledMailbox
from .runner import check_runner
from .types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from .infra import SharedInfra
    from .runner import AgentRunner

__all__ = ["AgentPool"]


class AgentPool:
    """Spawn agents with bounded concurrency; collect their outputs as they finish.

    Must be used from a running event loop. Agents run on ``infra``'s executor
    and are gated by its budget (a denied agent yields a budget-skipped output).

    Args:
        runner: Runs every pooled agent.
        max_concurrent: Agents running at once (>= 1).
        infra: Shared infrastructure; ``None`` = a fresh in-process ``SharedInfra``.

    Raises:
        ValueError: ``max_concurrent`` is not an int >= 1 (a bool never is).
    """

    def __init__(self, runner: "AgentRunner", max_concurrent: int, *, infra: "SharedInfra | None" = None) -> None:
        check_runner(runner)
        int_at_least(max_concurrent, 1, "AgentPool max_concurrent")
        if infra is None:
            from .infra import SharedInfra

            infra = SharedInfra()
        self.runner = runner
        self.infra = infra
        self._max = max_concurrent
        self._next_id: AgentId = 1
        self._router = MessageRouter()
        self._queue: collections.deque[tuple[AgentId, AgentSpec, str]] = collections.deque()
        self._running: dict[AgentId, tuple[asyncio.Task[AgentOutput], AgentSpec]] = {}
        self._done: collections.deque[tuple[AgentId, AgentOutput]] = collections.deque()
        self._wakeup = asyncio.Event()

    @property
    def max_concurrent(self) -> int:
        return self._max

    @property
    def active_count(self) -> int:
        """Spawned and not yet joined: running, queued, or finished awaiting a join."""
        return len(self._running) + len(self._queue) + len(self._done)

    @property
    def running_count(self) -> int:
        """Agents running now (<= ``max_concurrent``)."""
        return len(self._running)

    def router(self) -> MessageRouter:
        """The router for messages between pooled agents."""
        return self._router

    # -- spawning --------------------------------------------------------------
    def spawn(self, spec: AgentSpec, task: str) -> AgentId:
        """Start ``spec`` on ``task`` now, or queue it (FIFO) when the pool is full. Never rejects.

        The agent's inbox is registered at once, so messages can be sent to it
        while it is queued.

        Returns:
            The agent's id (ints from 1, never reused).
        """
        if not isinstance(spec, AgentSpec):
            raise TypeError(f"AgentPool.spawn takes an AgentSpec, got {type(spec).__name__}")
        aid = self._next_id
        self._next_id += 1
        self._router.register(aid)
        if len(self._running) < self._max:
            self._start(aid, spec, task)
        else:
            self._queue.append((aid, spec, task))
        return aid

    def try_spawn(self, spec: AgentSpec, task: str) -> AgentId:
        """Like :meth:`spawn` but never queues.

        Raises:
            PoolAtCapacity: ``agent pool at capacity ({running}/{max})``; no id is used.
        """
        if len(self._running) >= self._max or self._queue:
            raise PoolAtCapacity(len(self._running), self._max)
        return self.spawn(spec, task)

    def fan_out(self, configs: Iterable[tuple[AgentSpec, str]]) -> list[AgentId]:
        """Spawn each ``(spec, task)`` in order; returns their ids."""
        return [self.spawn(spec, task) for spec, task in configs]

    def _start(self, aid: AgentId, spec: AgentSpec, task: str) -> None:
        task_obj = asyncio.get_running_loop().create_task(self._run(aid, spec, task), name=f"carmulti-pool-{aid}")
        self._running[aid] = (task_obj, spec)
        task_obj.add_done_callback(functools.partial(self._finished, aid))

    async def _run(self, aid: AgentId, spec: AgentSpec, task: str) -> AgentOutput:
        skipped = reserve(self.infra, spec.name)
        if skipped is not None:
            return skipped
        inbox = self._router._inboxes.get(aid) or self._router.register(aid)
        mailbox = PooledMailbox(aid, inbox, self._router)
        return conclude(self.infra, await run_one(self.infra, self.runner, AgentJob(spec, task, mailbox=mailbox)),
                        spec.name)

    def _finished(self, aid: AgentId, t: "asyncio.Task[AgentOutput]") -> None:
        _, spec = self._running.pop(aid)
        self._router.unregister(aid)
        if t.cancelled():
            out = failed_output(spec.name, "aborted")
        elif t.exception() is not None:
            exc = t.exception()
            out = failed_output(spec.name, S.JOIN_ERROR.format(details=f"{type(exc).__name__}: {exc}"))
        else:
            out = t.result()
        self._done.append((aid, out))
        while self._queue and len(self._running) < self._max:
            self._start(*self._queue.popleft())
        self._wakeup.set()

    # -- joining ---------------------------------------------------------------
    async def join_next(self) -> tuple[AgentId, AgentOutput] | None:
        """The next agent to finish, as ``(id, output)``; ``None`` when nothing is left."""
        while not self._done:
            if not self._running and not self._queue:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._done.popleft()

    async def join_all(self) -> dict[AgentId, AgentOutput]:
        """Wait for every spawned agent; id → output (failures as error outputs)."""
        out: dict[AgentId, AgentOutput] = {}
        while True:
            nxt = await self.join_next()
            if nxt is None:
                return out
            out[nxt[0]] = nxt[1]

    def abort_all(self) -> None:
        """Cancel running agents and drop queued ones; each is joined later as error ``aborted``."""
        while self._queue:
            aid, spec, _ = self._queue.popleft()
            self._router.unregister(aid)
            self._done.append((aid, failed_output(spec.name, "aborted")))
        for task_obj, _ in list(self._running.values()):
            task_obj.cancel()
        self._wakeup.set()

    def __repr__(self) -> str:
        return f"<AgentPool running={len(self._running)} queued={len(self._queue)} max={self._max}>"

