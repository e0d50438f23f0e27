"""AgentPool: bounded-concurrency spawning with fan-out / fan-in and per-agent inboxes.

Port of the seed ``AgentPool`` + ``MessageRouter`` design (seed 004), with its
defects fixed:

* at capacity, :meth:`AgentPool.spawn` queues the agent (FIFO) instead of
  failing; :meth:`AgentPool.try_spawn` keeps the rejecting behaviour with the
  seed's text ``agent pool at capacity ({running}/{max})``;
* each agent's inbox is handed to its runner (``mailbox.inbox``), so messages
  sent to a pooled agent arrive (the seed dropped the receiver);
* an agent that crashes still yields its id, with an error output.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from . import _strings as S
from .errors import MailboxSend, PoolAtCapacity
from .executors.base import AgentJob
from .lifecycle import conclude, failed_output, reserve, run_one
from .mailbox import Inbox
from .runner import check_runner
from .types import AgentOutput, AgentSpec

if TYPE_CHECKING:
    from .infra import SharedInfra
    from .runner import AgentRunner

__all__ = ["AgentId", "AgentMessage", "AgentPool", "MessageRouter", "PooledMailbox"]

#: Pool agent ids: ints from 1, never reused. 0 means "external / supervisor" as a sender.
AgentId = int


@dataclass
class AgentMessage:
    """A message between pooled agents (``from_id`` 0 = external)."""

    from_id: AgentId
    to: AgentId
    content: str


class MessageRouter:
    """Routes :class:`AgentMessage` to pooled agents' bounded inboxes by id.

    Args:
        inbox_capacity: Messages per inbox (>= 1, default 32 as the seed). A
            full inbox makes ``send`` wait (backpressure), never drop.
    """

    def __init__(self, inbox_capacity: int = 32) -> None:
        if not isinstance(inbox_capacity, int) or inbox_capacity < 1:
            raise ValueError(f"MessageRouter inbox_capacity must be an int >= 1, got {inbox_capacity!r}")
        self.inbox_capacity = inbox_capacity
        self._inboxes: dict[AgentId, Inbox] = {}

    def register(self, agent_id: AgentId) -> Inbox:
        """Create (or replace) ``agent_id``'s inbox and return it."""
        old = self._inboxes.get(agent_id)
        if old is not None:
            old.close()
        inbox = Inbox(str(agent_id), self.inbox_capacity)
        self._inboxes[agent_id] = inbox
        return inbox

    def unregister(self, agent_id: AgentId) -> None:
        inbox = self._inboxes.pop(agent_id, None)
        if inbox is not None:
            inbox.close()

    async def send(self, msg: AgentMessage, *, timeout_s: float | None = None) -> None:
        """Deliver ``msg`` to agent ``msg.to``.

        Raises:
            MailboxSend: ``agent {to} not registered`` (unknown or finished agent).
            MailboxFull: the inbox stayed full for ``timeout_s``.
        """
        inbox = self._inboxes.get(msg.to)
        if inbox is None:
            raise MailboxSend(f"agent {msg.to} not registered")
        await inbox._put(msg, timeout_s)

    def agent_count(self) -> int:
        """Registered inboxes."""
        return len(self._inboxes)


class PooledMailbox:
    """The ``mailbox`` argument a pooled agent's runner receives.

    Attributes:
        agent_id: This agent's pool id.
        inbox: This agent's :class:`~carmulti.Inbox` (``await mailbox.inbox.recv()``).
        router: The pool's router.
    """

    __slots__ = ("agent_id", "inbox", "router")

    def __init__(self, agent_id: AgentId, inbox: Inbox, router: MessageRouter) -> None:
        self.agent_id = agent_id
        self.inbox = inbox
        self.router = router

    async def send(self, to: AgentId, content: str, *, timeout_s: float | None = None) -> None:
        """Send ``content`` to pooled agent ``to`` from this agent."""
        await self.router.send(AgentMessage(self.agent_id, to, content), timeout_s=timeout_s)


class AgentPool:
    """Spawn agents with bounded concurrency; collect their outputs as they finish.

    Must be used from a running event loop. Agents run on ``infra``'s executor
    and are gated by its budget (a denied agent yields a budget-skipped output).

    Args:
        runner: Runs every pooled agent.
        max_concurrent: Agents running at once (>= 1).
        infra: Shared infrastructure; ``None`` = a fresh in-process ``SharedInfra``.

    Raises:
        ValueError: ``max_concurrent < 1``.
    """

    def __init__(self, runner: "AgentRunner", max_concurrent: int, *, infra: "SharedInfra | None" = None) -> None:
        check_runner(runner)
        if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or max_concurrent < 1:
            raise ValueError(f"AgentPool max_concurrent must be an int >= 1, got {max_concurrent!r}")
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
        task_obj.add_done_callback(lambda t, aid=aid: self._finished(aid, t))

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

