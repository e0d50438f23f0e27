"""Worker-hosted inboxes and the direct worker-to-worker path of the mailbox (worker side).

An inbox an agent registers through a coordinator-side :class:`~carmulti.Mailbox`
lives in the agent's worker: ``recv``/``try_recv``/``qsize`` are local. The
coordinator stays the directory (a stand-in per name, :mod:`.hosting`).

A sender in another worker looks the route up once (``name -> (hid, host)``,
cached, asked of the coordinator on a miss) and sends the put **directly** to
the host over a peer connection: every worker listens on a Unix socket in the
executor's ``ipc://`` directory (``p{index}.{gen}``) and connects to a peer
lazily (plain stream sockets: a ZeroMQ hop costs ~5x a Unix-socket round trip
here); each message is a 4-byte big-endian length and a body checked by
:data:`.wire.PEER`. A connection serves both directions: the connecting worker
says who it is first (``phello``), and the worker it reached then sends its own
puts to it on that connection instead of opening a second one, so a reply and
the answer to the put it replies to travel on one socket (an agent ping-pong
across two workers: 10.6 k against 10.0 k round trips a second with one
connection each way, medians of 9 alternating runs of 60,000), and N workers
hold at most N(N-1)/2 connections, not N(N-1). It does so only when the
connection's peer process (``SO_PEERCRED``) is the pid the coordinator gave
for that worker, so a process claiming another worker's name gets none of its
messages; when both connect at once, each keeps its own. The host puts the message in the real
:class:`~carmulti.Inbox` and answers once it is accepted (``putr``: ok, ``gone``
or the ``MailboxFull`` / ``MailboxSend`` error), so backpressure and the errors
are those of an in-process inbox; one sender's sends arrive in order (a worker's puts
to another take one FIFO connection at a time). ``gone`` (closed or re-registered
elsewhere) drops the cached route and the sender falls back to the coordinator,
which decides. Without an ``ipc://`` directory (``RayExecutor``: TCP) puts always
go through the coordinator, which forwards them to the host over the worker's
main socket.

A peer that dies: its connections close (puts waiting on them fail with
:class:`~carmulti.MailboxSend` naming it) and the coordinator tells every worker
(``lost``), which forget their routes to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Any, Callable

import orjson

from ...errors import MailboxSend, WireProtocolError
from ...mailbox import Inbox
from . import wire
from .payloads import FRAME_OVERHEAD, decode_error, decode_value, encode_error, encode_value

__all__ = ["Peers", "lost_text", "peer_path", "settle_put"]

log = logging.getLogger("carmulti.executors.worker")

#: Routes kept per worker before the cache starts over (names ever sent to, across mailboxes).
MAX_ROUTES = 10_000
_LEN = struct.Struct(">I")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_path(peer_dir: str, ident: str) -> str:
    """The Unix socket of worker ``ident`` (``w{index}.{gen}``) in ``peer_dir``."""
    return os.path.join(peer_dir, f"p{ident[1:]}")


def lost_text(name: str, reason: str) -> str:
    """The ``MailboxSend`` detail for an inbox whose host worker died."""
    return f"inbox of '{name}' was hosted by a worker that was lost ({reason})"


def _plain(raw: bytes) -> dict[str, Any] | None:
    """``raw`` as a body when it is a well-formed common frame (a ``put`` with a number or no
    timeout, or a ``putr`` ok/gone), else ``None``: :func:`.wire.decode` checks it in full then."""
    try:
        b = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(b) is not dict or type(b.get("rid")) is not int:
        return None
    t = b.get("t")
    if t == "put":
        to = b.get("timeout_s", 0)
        if type(b.get("hid")) is int and "msg" in b and (to is None or type(to) in (int, float)):
            return b
    elif t == "putr" and ("ok" in b or "gone" in b):
        return b
    return None


def settle_put(pending: dict[int, Any], body: dict[str, Any]) -> None:
    """Settle the put a ``putr`` answers: ``pending[rid]`` is ``(future, ...)``; the future gets True
    (accepted), False (gone: the inbox is not hosted there any more) or the error the host raised."""
    ent = pending.pop(body["rid"], None)
    if ent is None or ent[0].done():
        return
    if "ok" in body:
        ent[0].set_result(True)
    elif "gone" in body:
        ent[0].set_result(False)
    else:
        ent[0].set_exception(decode_error(body["err"]))


def _peer_pid(transport: Any) -> int:
    """The pid of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``), or 0."""
    sock = transport.get_extra_info("socket")
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return 0
    try:
        return int(_CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, opt, _CRED.size))[0])
    except OSError:
        return 0


class _Link(asyncio.Protocol):
    """One peer connection: length-prefixed frames both ways, puts and answers either way.

    ``host`` is the worker at the other end: known when we connected, learnt from its
    ``phello`` when it connected to us (``None`` until then).
    """

    def __init__(self, peers: "Peers", host: str | None) -> None:
        self.peers = peers
        self.host = host
        self.incoming = host is None  # the other worker connected to us
        self.pid = 0  # of the process that connected to us (SO_PEERCRED; 0: unknown)
        self.transport: Any = None
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.incoming:
            self.pid = _peer_pid(transport)
            self.peers.incoming.add(self)
        else:
            self.send({"t": "phello", "worker": self.peers.ident})

    def send(self, body: dict[str, Any]) -> None:
        data = orjson.dumps(body)
        self.transport.write(_LEN.pack(len(data)) + data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        peers = self.peers
        limit = peers.max_frame_bytes
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            size = _LEN.unpack_from(buf, pos)[0]
            if size > limit:
                peers.reject(WireProtocolError("$", f"body of {size} bytes exceeds max_frame_bytes={limit}"))
                self.transport.close()  # no way to find the next frame
                return
            if n - pos - 4 < size:
                break
            raw = bytes(buf[pos + 4:pos + 4 + size])
            pos += 4 + size
            body = _plain(raw)
            if body is None:  # not the common well-formed case: the full check (and its error text)
                try:
                    body, _ = wire.decode([wire.VERSION, raw], wire.PEER, limit)
                except WireProtocolError as exc:
                    peers.reject(exc)
                    continue
            t = body["t"]
            if t == "put":
                peers.serve_put(body, self)
            elif t == "putr":
                peers.on_answer(self, body)
            elif t == "pcancel":
                peers.cancel_put(self, body["rid"])
            else:
                peers.on_hello(self, body["worker"])
        del buf[:pos]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.peers.on_link_lost(self)


class Peers:
    """The inboxes this worker hosts, its routes to other hosts, and its peer connections.

    Args:
        loop: The worker's loop.
        ident: This worker's identity (``w{index}.{gen}``).
        peer_dir: The executor's ``ipc://`` directory, or ``None`` (no direct path).
        max_frame_bytes: Largest frame (a bigger put goes through the coordinator, which refuses it).
        to_coordinator: Sends frames on the worker's main socket (answers to forwarded puts).
        rpc_call: ``WorkerProcess.rpc_call`` (route look-ups).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, ident: str, peer_dir: str | None, max_frame_bytes: int,
                 to_coordinator: Callable[[list[bytes]], None],
                 rpc_call: Callable[[int, int, str, list[Any]], Any]) -> None:
        self.loop = loop
        self.ident = ident
        self.peer_dir = peer_dir
        self.max_frame_bytes = max_frame_bytes
        self._to_coordinator = to_coordinator
        self._rpc_call = rpc_call
        self.hosted: dict[int, Inbox] = {}  # hid -> the inbox
        self.local: dict[tuple[int, str], int] = {}  # (mailbox object, name) -> hid hosted here
        self._key_of: dict[int, tuple[int, str]] = {}
        self.routes: dict[tuple[int, str], list[Any]] = {}  # (mailbox object, name) -> [hid, host, pid]
        #: rid -> (answer, host, name, pid, the connection the put left on)
        self.pending: dict[int, tuple[asyncio.Future[bool], str, str, int, _Link]] = {}
        self.tasks: dict[tuple[_Link | None, int], asyncio.Task[None]] = {}  # puts waiting for room
        self.links: dict[str, _Link] = {}  # host -> the connection our puts to it take (ours, or its)
        self.incoming: set[_Link] = set()  # connections other workers opened to us
        self.server: Any = None
        self.rejected = 0
        self._rid = 1

    async def start(self) -> None:
        """Listen for peers (when there is an ``ipc://`` directory)."""
        if self.peer_dir is None:
            return
        try:
            self.server = await self.loop.create_unix_server(
                lambda: _Link(self, None), peer_path(self.peer_dir, self.ident))
        except OSError as exc:  # e.g. a path too long for a Unix socket: every put goes through the coordinator
            log.warning("carmulti worker %d: no direct mailbox path (%s)", os.getpid(), exc)
            self.peer_dir = None

    # -- hosting ----------------------------------------------------------------------------------------------------
    def host(self, oid: int, name: str, hid: int, capacity: int) -> Inbox:
        """A new local inbox for ``name`` (coordinator id ``hid``); one this worker hosted for it is closed."""
        key = (oid, name)
        self.unhost(oid, name)
        inbox = self.hosted[hid] = Inbox(name, capacity)
        self.local[key] = hid
        self._key_of[hid] = key
        return inbox

    def unhost(self, oid: int, name: str) -> None:
        """Close and drop the inbox this worker hosts for ``name`` (accepted messages stay readable)."""
        self.routes.pop((oid, name), None)
        hid = self.local.get((oid, name))
        if hid is not None:
            self.close([hid])

    def close(self, hids: list[int]) -> None:
        """``hclose``: close and drop hosted inboxes (their waiting senders get ``MailboxSend``)."""
        for hid in hids:
            inbox = self.hosted.pop(hid, None)
            key = self._key_of.pop(hid, None)
            if key is not None and self.local.get(key) == hid:
                del self.local[key]
            if inbox is not None:
                inbox.close()

    def serve_put(self, body: dict[str, Any], origin: _Link | None) -> None:
        """A ``put`` from a peer (``origin``: its connection) or from the coordinator (``None``)."""
        rid = body["rid"]
        inbox = self.hosted.get(body["hid"])
        if inbox is None:
            self._answer(origin, {"t": "putr", "rid": rid, "gone": True})
            return
        msg = decode_value(body["msg"])
        try:
            if inbox._put_nowait(msg):
                self._answer(origin, {"t": "putr", "rid": rid, "ok": True})
                return
        except MailboxSend as exc:
            self._answer(origin, {"t": "putr", "rid": rid, "err": encode_error(exc)})
            return
        task = self.loop.create_task(self._wait_put(inbox, msg, body.get("timeout_s"), origin, rid))
        self.tasks[(origin, rid)] = task

    async def _wait_put(self, inbox: Inbox, msg: Any, timeout_s: float | None, origin: _Link | None,
                        rid: int) -> None:
        try:
            await inbox._put(msg, timeout_s)
            ans: dict[str, Any] = {"t": "putr", "rid": rid, "ok": True}
        except asyncio.CancelledError:
            return  # the sender gave up (pcancel), its connection closed, or this worker stops: not accepted
        except Exception as exc:  # noqa: BLE001 - MailboxFull / MailboxSend go back to the sender
            ans = {"t": "putr", "rid": rid, "err": encode_error(exc)}
        finally:
            self.tasks.pop((origin, rid), None)
        self._answer(origin, ans)

    def cancel_put(self, origin: _Link | None, rid: int) -> None:
        """``pcancel``: the sender stopped waiting; a put still waiting for room is withdrawn."""
        t = self.tasks.pop((origin, rid), None)
        if t is not None:
            t.cancel()

    def _answer(self, origin: _Link | None, body: dict[str, Any]) -> None:
        if origin is None:
            self._to_coordinator(wire.encode(body))
        elif not origin.closed:
            origin.send(body)

    def reject(self, exc: WireProtocolError) -> None:
        """Count and log (rate-limited) a malformed peer frame."""
        self.rejected += 1
        if self.rejected <= 3 or self.rejected % 1000 == 0:
            log.warning("carmulti worker %d rejected a peer frame (%d so far): %s", os.getpid(), self.rejected, exc)

    # -- sending ----------------------------------------------------------------------------------------------------
    def route(self, job: int, oid: int, name: str) -> list[Any] | None:
        """``[hid, host, pid]`` of ``name``'s hosted inbox (cached; asked of the coordinator on a miss), or ``None``."""
        key = (oid, name)
        r: list[Any] | None = self.routes.get(key)
        if r is not None:
            return r
        r = self._rpc_call(job, oid, "route", [name])
        if r is None:
            return None
        if len(self.routes) >= MAX_ROUTES:
            self.routes.clear()
        self.routes[key] = r
        return r

    async def put(self, oid: int, route: list[Any], msg: Any, timeout_s: float | None) -> bool:
        """Put ``msg`` in the inbox at ``route``; False: not there (any more), or no direct path.

        Raises:
            MailboxFull, MailboxSend: as the host's inbox raised them, or the host died.
        """
        hid, host, pid = route
        if host == self.ident:
            inbox = self.hosted.get(hid)
            if inbox is None:
                self.routes.pop((oid, msg.to), None)
                return False
            await inbox._put(msg, timeout_s)
            return True
        link = self.links.get(host)
        if link is None or link.closed:
            link = self._offered(host, pid) or await self._connect(host)
            if link is None or link.closed:  # closed while connecting: its loss would fail nothing of ours
                return False
        rid = self._rid
        self._rid += 1
        try:
            data = orjson.dumps({"t": "put", "rid": rid, "hid": hid, "msg": encode_value(msg), "timeout_s": timeout_s})
        except TypeError:
            return False  # not JSON: the coordinator's path names the problem
        if len(data) > self.max_frame_bytes - FRAME_OVERHEAD:
            return False  # too big for one frame: the coordinator's path refuses it with the sizes
        fut: asyncio.Future[bool] = self.loop.create_future()
        self.pending[rid] = (fut, host, msg.to, pid, link)
        link.transport.write(_LEN.pack(len(data)) + data)
        try:
            ok = await fut
        except asyncio.CancelledError:
            if self.pending.pop(rid, None) is not None and not link.closed:
                link.send({"t": "pcancel", "rid": rid})
            raise
        if not ok:
            self.routes.pop((oid, msg.to), None)
        return ok

    async def _connect(self, host: str) -> _Link | None:
        if self.peer_dir is None:
            return None
        try:
            _, link = await self.loop.create_unix_connection(lambda: _Link(self, host),
                                                             peer_path(self.peer_dir, host))
        except OSError:
            return None  # gone, or not listening: the coordinator's path decides
        old = self.links.get(host)
        if old is not None and not old.closed:  # another put connected meanwhile, or the host did: keep one (FIFO)
            link.transport.close()
            return old
        self.links[host] = link
        return link

    def on_hello(self, link: _Link, host: str) -> None:
        """``phello``: ``link`` says worker ``host`` opened it (checked against the route's pid when used)."""
        if not link.incoming or link.host is not None or host == self.ident:
            self.reject(WireProtocolError("$.worker", f"an unexpected phello from {host!r} on this connection"))
            return
        link.host = host

    def _offered(self, host: str, pid: int) -> _Link | None:
        """A live connection worker ``host`` (process ``pid``) opened to us, adopted for our puts to it."""
        for link in self.incoming:
            if link.host == host and link.pid == pid and pid and not link.closed:
                self.links[host] = link
                return link
        return None

    def on_answer(self, link: _Link, body: dict[str, Any]) -> None:
        """A ``putr`` on ``link``: settles our put with that rid if the put left on ``link`` (a late
        answer to a put given up is dropped; one for a put sent elsewhere is refused)."""
        ent = self.pending.get(body["rid"])
        if ent is None:
            return
        if ent[4] is not link:
            self.reject(WireProtocolError("$.rid", f"a putr for put {body['rid']}, which did not leave on this "
                                                   "connection"))
            return
        settle_put(self.pending, body)

    def on_link_lost(self, link: _Link) -> None:
        """A peer connection closed: our puts waiting on it fail, the peer's puts waiting for room here are withdrawn."""
        self.incoming.discard(link)
        for key in [k for k in self.tasks if k[0] is link]:
            self.tasks.pop(key).cancel()
        if link.host is not None and self.links.get(link.host) is link:
            del self.links[link.host]
        self._fail(lambda ent: ent[4] is link, lambda pid: f"worker {pid} closed its connection")

    def _fail(self, which: Callable[[tuple[Any, ...]], bool], reason: Callable[[int], str]) -> None:
        for rid, ent in list(self.pending.items()):
            if which(ent):
                del self.pending[rid]
                fut, _, name, pid, _ = ent
                if not fut.done():
                    fut.set_exception(MailboxSend(lost_text(name, reason(pid))))

    def on_lost(self, host: str, reason: str) -> None:
        """``lost``: worker ``host`` died; puts waiting for it fail, routes to it are forgotten."""
        self._fail(lambda ent: ent[1] == host, lambda pid: reason)
        for key in [k for k, r in self.routes.items() if r[1] == host]:
            del self.routes[key]
        link = self.links.pop(host, None)
        if link is not None:
            link.transport.close()

    # -- end --------------------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Close the peer connections and every hosted inbox (the worker stops)."""
        for t in list(self.tasks.values()):
            t.cancel()
        self.close(list(self.hosted))
        for link in {*self.links.values(), *self.incoming}:
            if link.transport is not None:
                link.transport.close()
        self.links.clear()
        if self.server is not None:
            self.server.close()
            self.server = None
