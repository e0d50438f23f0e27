"""Bounded async channels between agents: every message of the package goes through here.

Two routers share one implementation (registry, delivery, backpressure, close):

* :class:`Mailbox` (car-multi ``mailbox``) routes a :class:`~carmulti.Message`
  by agent *name* (its ``to`` field); patterns hand one to their runners.
* :class:`MessageRouter` (seed ``AgentPool``) routes an :class:`AgentMessage`
  by pooled agent *id*; a pooled runner gets its inbox through a
  :class:`PooledMailbox`.

``register(key)`` gives an agent an :class:`Inbox`. Inboxes are bounded: a full
inbox applies backpressure (the sender waits), and with ``timeout_s`` the wait
is bounded and ends in :class:`~carmulti.MailboxFull`. Closing an inbox
(``unregister``, or registering the key again) fails the senders waiting for
room with :class:`~carmulti.MailboxSend`. Nothing is ever dropped silently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ._validate import int_at_least
from .errors import MailboxFull, MailboxSend, MailboxTimeout
from .types import Message

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_INBOX_CAPACITY",
    "AgentId",
    "AgentMessage",
    "Inbox",
    "InboxLike",
    "Mailbox",
    "MessageRouter",
    "PooledMailbox",
    "RouterLike",
]

#: Default inbox capacity in messages (Rust ``Mailbox::default()``; unspecified there).
DEFAULT_BUFFER_SIZE = 64
#: Default pooled-agent inbox capacity in messages (the seed's 32).
DEFAULT_INBOX_CAPACITY = 32

#: Pool agent ids: ints from 1, never reused. 0 means "external / supervisor" as a sender.
AgentId = int

_K = TypeVar("_K", str, int)


@dataclass
class AgentMessage:
    """A message between pooled agents (``from_id`` 0 = external)."""

    from_id: AgentId
    to: AgentId
    content: str


class Inbox:
    """The receiving end of one agent's channel."""

    __slots__ = ("name", "_queue", "_closed", "_closed_fut")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=capacity)
        self._closed = False
        self._closed_fut: asyncio.Future[None] | None = None

    def close(self) -> None:
        """Refuse further messages; senders waiting for room get :class:`MailboxSend`.

        Messages already accepted stay readable from this inbox. Called when the
        agent is unregistered or its name is registered again.
        """
        self._closed = True
        fut = self._closed_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def capacity(self) -> int:
        return self._queue.maxsize

    def qsize(self) -> int:
        """Messages waiting."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    async def recv(self, timeout_s: float | None = None) -> Any:
        """Wait for the next message.

        Args:
            timeout_s: Seconds to wait; ``None`` waits forever.

        Raises:
            MailboxTimeout: nothing arrived within ``timeout_s``.
        """
        q = self._queue
        if not q.empty():
            return q.get_nowait()
        if timeout_s is None:
            return await q.get()
        try:
            async with asyncio.timeout(timeout_s):  # no task per call, unlike wait_for
                return await q.get()
        except TimeoutError:
            raise MailboxTimeout(self.name) from None

    def try_recv(self) -> Any | None:
        """The next message if one is waiting, else ``None``."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _put(self, msg: Any, timeout_s: float | None) -> None:
        if self._closed:
            raise MailboxSend(f"inbox of '{self.name}' is closed")
        q = self._queue
        if not q.full():
            q.put_nowait(msg)
            return
        # Backpressure: wait for room, for the timeout, or for the inbox to close.
        if self._closed_fut is None:
            self._closed_fut = asyncio.get_running_loop().create_future()
        put = asyncio.ensure_future(q.put(msg))
        try:
            done, _ = await asyncio.wait((put, self._closed_fut), timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            put.cancel()
            raise
        if put in done:
            put.result()
            return
        put.cancel()
        try:
            await put
        except asyncio.CancelledError:
            pass
        if self._closed:
            raise MailboxSend(f"inbox of '{self.name}' was closed while the message waited for room; "
                              "it was not delivered")
        raise MailboxFull(self.name, q.maxsize, timeout_s)  # type: ignore[arg-type]

    def __aiter__(self) -> "Inbox":
        return self

    async def __anext__(self) -> Any:
        return await self.recv()


class _Router(Generic[_K]):
    """Bounded inboxes by key: the one registry, delivery and close behind both routers.

    The key is an agent name (:class:`Mailbox`) or a pooled agent id
    (:class:`MessageRouter`). Subclasses name the capacity argument (``what``)
    and give the detail of the :class:`~carmulti.MailboxSend` raised for a key
    without an inbox (``_unknown``, formatted with the key).
    """

    __slots__ = ("_capacity", "_inboxes")

    #: ``MailboxSend`` detail for a key with no inbox; ``{}`` is the key.
    _unknown: ClassVar[str]

    def __init__(self, capacity: object, what: str) -> None:
        self._capacity = int_at_least(capacity, 1, what)
        self._inboxes: dict[_K, Inbox] = {}

    def register(self, key: _K, /) -> Inbox:
        """Create (or replace) the inbox of agent ``key`` and return it.

        A replaced inbox is closed: its waiting senders get :class:`~carmulti.MailboxSend`.
        """
        old = self._inboxes.get(key)
        if old is not None:
            old.close()
        inbox = self._inboxes[key] = Inbox(str(key), self._capacity)
        return inbox

    def unregister(self, key: _K, /) -> None:
        """Drop the inbox of agent ``key``; later sends to it raise :class:`~carmulti.MailboxSend`."""
        inbox = self._inboxes.pop(key, None)
        if inbox is not None:
            inbox.close()

    async def _send(self, key: _K, msg: Any, timeout_s: float | None) -> None:
        inbox = self._inboxes.get(key)
        if inbox is None:
            raise MailboxSend(self._unknown.format(key))
        await inbox._put(msg, timeout_s)


class Mailbox(_Router[str]):
    """Routes messages to registered agents by name.

    Args:
        buffer_size: Capacity of each inbox, in messages (an int >= 1).

    Raises:
        ValueError: ``buffer_size`` is not an int >= 1 (a bool never is).
    """

    __slots__ = ("inbox",)
    _unknown = "no agent '{}'"

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        super().__init__(buffer_size, "Mailbox buffer_size")
        #: The inbox of the agent this mailbox was handed to, when the engine
        #: registered one for it; ``None`` otherwise.
        self.inbox: Inbox | None = None

    @property
    def buffer_size(self) -> int:
        """Capacity of each inbox, in messages."""
        return self._capacity

    def names(self) -> list[str]:
        """Registered agent names."""
        return list(self._inboxes)

    def __contains__(self, name: object) -> bool:
        return name in self._inboxes

    async def send(self, msg: Message, *, timeout_s: float | None = None) -> None:
        """Deliver ``msg`` to ``msg.to``, waiting while the inbox is full.

        Args:
            msg: The message.
            timeout_s: Bound on the backpressure wait, in seconds; ``None`` waits.

        Raises:
            MailboxSend: no agent ``msg.to`` (text ``mailbox send error: no agent '{to}'``)
                or its inbox was closed.
            MailboxFull: the inbox stayed full for ``timeout_s``.
        """
        await self._send(msg.to, msg, timeout_s)

    async def broadcast(self, msg: Message, *, timeout_s: float | None = None) -> int:
        """Deliver a copy of ``msg`` (``to`` rewritten) to every registered agent, sender included.

        Returns:
            How many inboxes received it.

        Raises:
            MailboxSend: the first failed delivery (earlier ones stay delivered).
        """
        n = 0
        for name, inbox in list(self._inboxes.items()):
            copy = Message(msg.from_agent, name, msg.content, msg.kind, msg.timestamp)
            await inbox._put(copy, timeout_s)
            n += 1
        return n


class MessageRouter(_Router[AgentId]):
    """Routes :class:`AgentMessage` to pooled agents' bounded inboxes by id.

    Args:
        inbox_capacity: Messages per inbox (an int >= 1, default 32 as the seed).
            A full inbox makes ``send`` wait (backpressure), never drop.

    Raises:
        ValueError: ``inbox_capacity`` is not an int >= 1 (a bool never is).
    """

    __slots__ = ()
    _unknown = "agent {} not registered"

    def __init__(self, inbox_capacity: int = DEFAULT_INBOX_CAPACITY) -> None:
        super().__init__(inbox_capacity, "MessageRouter inbox_capacity")

    @property
    def inbox_capacity(self) -> int:
        """Messages per inbox."""
        return self._capacity

    async def send(self, msg: AgentMessage, *, timeout_s: float | None = None) -> None:
        """Deliver ``msg`` to agent ``msg.to``, waiting while the inbox is full.

        Raises:
            MailboxSend: ``agent {to} not registered`` (unknown or finished agent)
                or its inbox was closed.
            MailboxFull: the inbox stayed full for ``timeout_s``.
        """
        await self._send(msg.to, msg, timeout_s)

    def agent_count(self) -> int:
        """Registered inboxes."""
        return len(self._inboxes)


class InboxLike(Protocol):
    """The receiving API a pooled agent's inbox offers: an :class:`Inbox`, or its proxy in a worker process."""

    @property
    def name(self) -> str: ...

    @property
    def capacity(self) -> int: ...

    def qsize(self) -> int: ...

    async def recv(self, timeout_s: float | None = None) -> Any: ...

    def try_recv(self) -> Any | None: ...

    def __aiter__(self) -> InboxLike: ...

    async def __anext__(self) -> Any: ...


class RouterLike(Protocol):
    """The pooled router API: a :class:`MessageRouter`, or its proxy in a worker process."""

    def register(self, agent_id: AgentId, /) -> InboxLike: ...

    def unregister(self, agent_id: AgentId, /) -> None: ...

    def agent_count(self) -> int: ...

    async def send(self, msg: AgentMessage, *, timeout_s: float | None = None) -> None: ...


class PooledMailbox:
    """The ``mailbox`` argument a pooled agent's runner receives.

    Attributes:
        agent_id: This agent's pool id.
        inbox: This agent's :class:`~carmulti.Inbox` (``await mailbox.inbox.recv()``); in a
            worker process, a proxy with the same receiving API (:class:`InboxLike`).
        router: The pool's router (:class:`RouterLike`: a :class:`MessageRouter` or its proxy).
    """

    __slots__ = ("agent_id", "inbox", "router")

    def __init__(self, agent_id: AgentId, inbox: InboxLike, router: RouterLike) -> None:
        self.agent_id = agent_id
        self.inbox = inbox
        self.router = router

    async def send(self, to: AgentId, content: str, *, timeout_s: float | None = None) -> None:
        """Send ``content`` to pooled agent ``to`` from this agent."""
        await self.router.send(AgentMessage(self.agent_id, to, content), timeout_s=timeout_s)
