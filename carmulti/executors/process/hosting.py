"""Inboxes hosted in workers, seen from the coordinator: the directory of the direct mailbox path.

An agent in a worker that registers a name on a coordinator-side
:class:`~carmulti.Mailbox` gets a real :class:`~carmulti.Inbox` in its own
worker (:mod:`.peers`); the coordinator's mailbox keeps, under that name, a
:class:`HostedInbox` stand-in that knows the host worker and the inbox's id
(``hid``, never reused). The mailbox's own code is unchanged: ``send``,
``broadcast``, ``register`` and ``unregister`` on the coordinator reach a hosted
inbox through its stand-in, whose ``_put`` forwards the message to the host
(``put`` on the worker's main socket) and returns once the host accepted it,
and whose ``close`` closes the inbox at its host (``hclose``).

Lifetimes: a hosted inbox outlives its agent's job; when the coordinator
unpins the mailbox (its jobs all ended) or the executor closes, the hosts drop
their inboxes and the stand-ins become plain (empty) coordinator inboxes of the
same capacity. When a host worker dies its stand-ins close and later sends
raise :class:`~carmulti.MailboxSend` naming the lost worker; puts waiting for it
fail the same way, and every other worker is told (``lost``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ...errors import MailboxSend
from ...mailbox import Inbox, Mailbox
from . import wire
from .payloads import FRAME_OVERHEAD, encode_value, too_big
from .peers import lost_text, settle_put

if TYPE_CHECKING:
    from .records import WorkerHandle
    from .transport import Transport

__all__ = ["HostedInbox", "Hosts"]


class HostedInbox(Inbox):
    """The coordinator's stand-in for an inbox that lives in worker ``host`` as ``hid``."""

    __slots__ = ("_hosts", "host", "hid", "lost", "detached")

    def __init__(self, hosts: "Hosts", name: str, capacity: int, host: "WorkerHandle", hid: int) -> None:
        super().__init__(name, capacity)
        self._hosts = hosts
        self.host = host
        self.hid = hid
        self.lost: str | None = None  # the MailboxSend detail once its host died
        self.detached = False  # the host dropped it: from then on a plain coordinator inbox

    async def _put(self, msg: Any, timeout_s: float | None) -> None:
        if self.lost is not None:
            raise MailboxSend(self.lost)
        if self.detached or self._closed:
            await Inbox._put(self, msg, timeout_s)  # closed: raises MailboxSend as any inbox
            return
        await self._hosts.forward(self, msg, timeout_s)

    def close(self) -> None:
        super().close()
        self._hosts.drop(self)


class Hosts:
    """Every hosted inbox of one executor run, by id; forwards puts and closes to their hosts.

    Args:
        transport: The coordinator's socket.
        loop: Reads the executor's loop (set once it runs).
        max_frame_bytes: Largest frame a worker accepts.
        peer_dir: The ``ipc://`` directory workers bind their peer sockets in, or ``None``.
    """

    def __init__(self, transport: "Transport", loop: Callable[[], asyncio.AbstractEventLoop | None],
                 max_frame_bytes: int) -> None:
        self.transport = transport
        self._loop = loop
        self.max_frame_bytes = max_frame_bytes
        self.by_hid: dict[int, HostedInbox] = {}
        self.pending: dict[int, tuple[asyncio.Future[bool], HostedInbox]] = {}
        self._hid = 1
        self._rid = 1

    # -- the directory ----------------------------------------------------------------------------------------------
    def register(self, mb: Mailbox, name: str, w: "WorkerHandle") -> dict[str, Any]:
        """``mb.register(name)`` for an agent in worker ``w``: the previous inbox is closed as ``register`` does."""
        hid = self._hid
        self._hid += 1
        ib = self.by_hid[hid] = mb._install(name, HostedInbox(self, name, mb.buffer_size, w, hid))
        return {"$hosted": hid, "cap": ib.capacity}

    def route(self, mb: Mailbox, name: str) -> list[Any] | None:
        """``[hid, host identity, host pid]`` of ``name``'s inbox when a live worker hosts it, else ``None``."""
        ib = mb._inboxes.get(name)
        if type(ib) is HostedInbox and ib.lost is None and not ib.detached and not ib.closed and not ib.host.dead:
            return [ib.hid, ib.host.ident.decode(), ib.host.pid]
        return None

    def drop(self, ib: HostedInbox) -> None:
        """``ib`` was closed (unregister, or its name registered again): close it at its host."""
        if self.by_hid.pop(ib.hid, None) is not None and not ib.host.dead:
            self.transport.send(ib.host, wire.encode({"t": "hclose", "hids": [ib.hid]}))

    def detach(self, inboxes: Iterable[Inbox]) -> None:
        """The hosts drop these inboxes; their stand-ins become plain coordinator inboxes."""
        by_host: dict[int, tuple[WorkerHandle, list[int]]] = {}
        for ib in inboxes:
            if type(ib) is HostedInbox and self.by_hid.pop(ib.hid, None) is not None:
                ib.detached = True
                by_host.setdefault(id(ib.host), (ib.host, []))[1].append(ib.hid)
        for w, hids in by_host.values():
            if not w.dead:
                self.transport.send(w, wire.encode({"t": "hclose", "hids": hids}))

    def detach_all(self) -> None:
        """The executor closes: every hosted inbox is dropped by its host."""
        self.detach(list(self.by_hid.values()))

    # -- puts from the coordinator ----------------------------------------------------------------------------------
    async def forward(self, ib: HostedInbox, msg: Any, timeout_s: float | None) -> None:
        """Put ``msg`` in ``ib`` at its host; returns once accepted (backpressure and errors as the host's inbox)."""
        w = ib.host
        rid = self._rid
        self._rid += 1
        try:
            frames = wire.encode({"t": "put", "rid": rid, "hid": ib.hid, "msg": encode_value(msg),
                                  "timeout_s": timeout_s})
        except TypeError as exc:
            raise MailboxSend(f"the message to '{ib.name}' cannot be sent to its worker: {exc}") from None
        if len(frames[1]) > self.max_frame_bytes - FRAME_OVERHEAD:
            raise ValueError(too_big(f"the message to '{ib.name}'", len(frames[1]), self.max_frame_bytes))
        fut: asyncio.Future[bool] = self._loop().create_future()  # type: ignore[union-attr]
        self.pending[rid] = (fut, ib)
        self.transport.send(w, frames)
        try:
            ok = await fut
        except asyncio.CancelledError:
            if self.pending.pop(rid, None) is not None and not w.dead:
                self.transport.send(w, wire.encode({"t": "pcancel", "rid": rid}))
            raise
        if not ok:  # the host closed it meanwhile
            raise MailboxSend(f"inbox of '{ib.name}' is closed")

    def on_answer(self, body: dict[str, Any]) -> None:
        """A ``putr`` from a host worker."""
        settle_put(self.pending, body)

    # -- a host died ------------------------------------------------------------------------------------------------
    def on_worker_lost(self, w: "WorkerHandle", reason: str, others: Iterable["WorkerHandle | None"]) -> None:
        """``w`` died: its inboxes close for good, puts waiting for it fail, the other workers are told."""
        for hid, ib in list(self.by_hid.items()):
            if ib.host is w:
                del self.by_hid[hid]
                ib.lost = lost_text(ib.name, reason)
                Inbox.close(ib)
        for rid, (fut, ib) in list(self.pending.items()):
            if ib.host is w:
                del self.pending[rid]
                if not fut.done():
                    fut.set_exception(MailboxSend(lost_text(ib.name, reason)))
        frames = wire.encode({"t": "lost", "worker": w.ident.decode(), "reason": reason})
        for o in others:
            if o is not None and o is not w and not o.dead:
                self.transport.send(o, frames)
