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
import collections
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Mapping, Protocol, TypeVar, cast

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
_I = TypeVar("_I", bound="Inbox")
#: The inboxes of a router none was registered with (shared, read-only; :meth:`_Router._install` replaces it).
_NO_INBOXES: Mapping[Any, Any] = MappingProxyType({})


@dataclass
class AgentMessage:
    """A message between pooled agents (``from_id`` 0 = external)."""

    from_id: AgentId
    to: AgentId
    content: str


class Inbox:
    """The receiving end of one agent's channel.

    A bounded FIFO of ``capacity`` messages. A message sent while a receiver
    waits is handed to that receiver directly; one sent to a full inbox waits
    (backpressure) and is moved in, in send order, as receivers make room.
    Timeouts are one timer per wait, no task per call.
    """

    __slots__ = ("name", "_items", "_capacity", "_getters", "_putters", "_closed")

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self._capacity = capacity
        self._items: collections.deque[Any] = collections.deque()
        #: Receivers waiting for a message (a done future is stale: timed out or cancelled).
        self._getters: collections.deque[asyncio.Future[Any]] = collections.deque()
        #: Senders waiting for room, with their message.
        self._putters: collections.deque[tuple[asyncio.Future[None], Any]] = collections.deque()
        self._closed = False

    def close(self) -> None:
        """Refuse further messages; senders waiting for room get :class:`MailboxSend`.

        Messages already accepted stay readable from this inbox. Called when the
        agent is unregistered or its name is registered again.
        """
        self._closed = True
        putters, self._putters = self._putters, collections.deque()
        for fut, _msg in putters:
            if not fut.done():
                fut.set_exception(MailboxSend(f"inbox of '{self.name}' was closed while the message waited for "
                                              "room; it was not delivered"))

    @property
    def capacity(self) -> int:
        return self._capacity

    def qsize(self) -> int:
        """Messages waiting."""
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def _take(self) -> Any:
        """Pop the oldest message (there is one) and let the oldest waiting sender's message in."""
        msg = self._items.popleft()
        putters = self._putters
        while putters:
            fut, waiting = putters.popleft()
            if not fut.done():
                self._items.append(waiting)
                fut.set_result(None)
                break
        return msg

    async def recv(self, timeout_s: float | None = None) -> Any:
        """Wait for the next message.

        Args:
            timeout_s: Seconds to wait; ``None`` waits forever.

        Raises:
            MailboxTimeout: nothing arrived within ``timeout_s``.
        """
        if self._items:
            return self._take()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._getters.append(fut)
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, fut, self.name)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Handed a message, then cancelled before resuming: put it back first in line.
                self._items.appendleft(fut.result())
                self._hand_off()
            else:
                _discard(self._getters, fut)  # timed out or cancelled while waiting: no stale waiter left
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _hand_off(self) -> None:
        """Give the oldest message to the oldest live waiting receiver, if both exist."""
        getters = self._getters
        while self._items and getters:
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(self._take())

    def try_recv(self) -> Any | None:
        """The next message if one is waiting, else ``None``."""
        return self._take() if self._items else None

    def _put_nowait(self, msg: Any) -> bool:
        """Accept ``msg`` if that needs no wait (a receiver waits, or there is room); False when full.

        Raises:
            MailboxSend: the inbox is closed.
        """
        if self._closed:
            raise MailboxSend(f"inbox of '{self.name}' is closed")
        getters = self._getters
        while getters:  # a receiver is waiting (the inbox is empty): hand the message over
            fut = getters.popleft()
            if not fut.done():
                fut.set_result(msg)
                return True
        if len(self._items) < self._capacity:
            self._items.append(msg)
            return True
        return False

    async def _put(self, msg: Any, timeout_s: float | None) -> None:
        if self._put_nowait(msg):
            return
        # Backpressure: wait for room, for the timeout, or for the inbox to close.
        loop = asyncio.get_running_loop()
        wait: asyncio.Future[None] = loop.create_future()
        self._putters.append((wait, msg))
        timer = None if timeout_s is None else loop.call_later(
            timeout_s, _expire_put, wait, MailboxFull(self.name, self._capacity, timeout_s))
        try:
            await wait  # done: the message is in the inbox; MailboxSend: closed; MailboxFull: timed out
        except BaseException:
            if not wait.done() or wait.cancelled() or wait.exception() is not None:
                _discard(self._putters, (wait, msg))  # not delivered: no stale sender left
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def __aiter__(self) -> "Inbox":
        return self

    async def __anext__(self) -> Any:
        return await self.recv()


def _discard(waiters: "collections.deque[Any]", item: Any) -> None:
    try:
        waiters.remove(item)
    except ValueError:
        pass


def _expire(fut: "asyncio.Future[Any]", name: str) -> None:
    if not fut.done():
        fut.set_exception(MailboxTimeout(name))


def _expire_put(fut: "asyncio.Future[None]", exc: MailboxFull) -> None:
    if not fut.done():
        fut.set_exception(exc)


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
        # A dict from the first registered inbox on: most agents of a big fan-out get a private mailbox and
        # never register one (64 bytes each, a million agents in flight: 61 MiB).
        self._inboxes: Mapping[_K, Inbox] = _NO_INBOXES

    def register(self, key: _K, /) -> Inbox:
        """Create (or replace) the inbox of agent ``key`` and return it.

        A replaced inbox is closed: its waiting senders get :class:`~carmulti.MailboxSend`.
        """
        return self._install(key, Inbox(str(key), self._capacity))

    def _install(self, key: _K, inbox: _I) -> _I:
        """Make ``inbox`` agent ``key``'s, closing the one it replaces (the one write path of ``_inboxes``)."""
        inboxes = self._inboxes
        if type(inboxes) is not dict:
            inboxes = self._inboxes = {}
        old = inboxes.get(key)
        if old is not None:
            old.close()
        inboxes[key] = inbox
        return inbox

    def unregister(self, key: _K, /) -> None:
        """Drop the inbox of agent ``key``; later sends to it raise :class:`~carmulti.MailboxSend`."""
        inbox = self._inboxes.get(key)
        if inbox is not None:
            del cast("dict[_K, Inbox]", self._inboxes)[key]  # it holds an inbox: the dict
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

    @classmethod
    def _fresh(cls) -> "Mailbox":
        """``Mailbox()`` without re-validating the default capacity: the private mailbox each agent of a
        big fan-out gets when its job carries none (one per agent in flight)."""
        m = cls.__new__(cls)
        m._capacity = DEFAULT_BUFFER_SIZE
        m._inboxes = _NO_INBOXES
        m.inbox = None
        return m

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
