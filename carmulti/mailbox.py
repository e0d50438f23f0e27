"""Named, bounded async channels between agents (car-multi ``mailbox``).

``register(name)`` gives an agent an :class:`Inbox`; ``send`` routes a
:class:`~carmulti.Message` by its ``to`` field. Inboxes are bounded
(``buffer_size`` messages): a full inbox applies backpressure (the sender
waits), and with ``timeout_s`` the wait is bounded and ends in
:class:`~carmulti.MailboxFull`. Nothing is ever dropped silently.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import MailboxFull, MailboxSend, MailboxTimeout
from .types import Message

__all__ = ["DEFAULT_BUFFER_SIZE", "Inbox", "Mailbox"]

#: Default inbox capacity in messages (Rust ``Mailbox::default()``; unspecified there).
DEFAULT_BUFFER_SIZE = 64


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


class Mailbox:
    """Routes messages to registered agents by name.

    Args:
        buffer_size: Capacity of each inbox, in messages (>= 1).

    Raises:
        ValueError: ``buffer_size < 1``.
    """

    __slots__ = ("buffer_size", "_inboxes", "inbox")

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"Mailbox buffer_size must be an int >= 1, got {buffer_size!r}")
        self.buffer_size = buffer_size
        self._inboxes: dict[str, Inbox] = {}
        #: The inbox of the agent this mailbox was handed to, when the engine
        #: registered one for it (``AgentPool`` does); ``None`` otherwise.
        self.inbox: Inbox | None = None

    def register(self, name: str) -> Inbox:
        """Create (or replace) ``name``'s inbox and return it."""
        old = self._inboxes.get(name)
        if old is not None:
            old.close()
        inbox = Inbox(name, self.buffer_size)
        self._inboxes[name] = inbox
        return inbox

    def unregister(self, name: str) -> None:
        """Drop ``name``'s inbox; later sends to it raise :class:`MailboxSend`."""
        inbox = self._inboxes.pop(name, None)
        if inbox is not None:
            inbox.close()

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
        inbox = self._inboxes.get(msg.to)
        if inbox is None:
            raise MailboxSend(f"no agent '{msg.to}'")
        await inbox._put(msg, timeout_s)

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
