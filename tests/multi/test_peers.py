"""The worker-to-worker connections of the mailbox (``executors.process.peers``), two ``Peers`` in one
process: one connection serves both directions once the connecting worker said who it is, only for the
process the route names, and a closed connection fails the puts waiting on it."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any, AsyncIterator

import pytest

from carmulti import MailboxSend, Message
from carmulti.executors.process.peers import Peers, _Link
from carmulti.executors.process.wire import DEFAULT_MAX_FRAME_BYTES

pytestmark = pytest.mark.timeout(30)

OID = 1  # the coordinator's mailbox object both agents share


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Peers, Peers]]:
    """Workers ``w0.0`` and ``w1.0``, listening in a fresh directory (short: a Unix socket path is <= 107 bytes)."""
    peer_dir = tempfile.mkdtemp(prefix="cmp", dir="/tmp")
    loop = asyncio.get_running_loop()
    made = [Peers(loop, ident, peer_dir, DEFAULT_MAX_FRAME_BYTES, lambda frames: None, _no_rpc) for ident in ("w0.0", "w1.0")]
    try:
        for p in made:
            await p.start()
        yield made[0], made[1]
    finally:
        for p in made:
            p.shutdown()
        await asyncio.sleep(0.01)  # the closed transports' callbacks run
        shutil.rmtree(peer_dir)


def _no_rpc(job: int, oid: int, method: str, args: list[Any]) -> Any:
    raise AssertionError("routes are given to put() directly in these tests")


async def test_the_worker_that_was_reached_answers_on_the_connection_it_was_reached_on(pair: tuple[Peers, Peers]) -> None:
    a, b = pair
    pid = os.getpid()  # both ends are this process: SO_PEERCRED names it
    alice, bob = a.host(OID, "alice", 10, 4), b.host(OID, "bob", 20, 4)
    assert await a.put(OID, [20, "w1.0", pid], Message("alice", "bob", 1), None)
    assert await b.put(OID, [10, "w0.0", pid], Message("bob", "alice", 2), None)
    assert await a.put(OID, [20, "w1.0", pid], Message("alice", "bob", 3), None)
    assert [bob.try_recv().content, bob.try_recv().content, alice.try_recv().content] == [1, 3, 2]
    (to_b,) = a.links.values()
    (to_a,) = b.links.values()
    assert not to_b.incoming and to_a.incoming and to_a.host == "w0.0" and to_a.pid == pid
    assert not a.incoming and b.incoming == {to_a}  # one connection for both directions


async def test_a_connection_from_another_process_than_the_routes_is_not_used_for_puts(pair: tuple[Peers, Peers]) -> None:
    a, b = pair
    pid = os.getpid()
    alice, bob = a.host(OID, "alice", 10, 4), b.host(OID, "bob", 20, 4)
    assert await a.put(OID, [20, "w1.0", pid], Message("alice", "bob", 1), None)
    # The coordinator says w0.0 is another process: the connection that claims to be w0.0 is not it.
    assert await b.put(OID, [10, "w0.0", pid + 1], Message("bob", "alice", 2), None)
    assert (bob.try_recv().content, alice.try_recv().content) == (1, 2)
    assert not b.links["w0.0"].incoming  # b opened its own connection
    assert len(a.incoming) == len(b.incoming) == 1


async def test_a_lost_shared_connection_fails_the_put_waiting_on_it_and_withdraws_it(pair: tuple[Peers, Peers]) -> None:
    a, b = pair
    pid = os.getpid()
    alice, bob = a.host(OID, "alice", 10, 1), b.host(OID, "bob", 20, 4)
    assert await a.put(OID, [20, "w1.0", pid], Message("alice", "bob", "hello"), None)
    assert await b.put(OID, [10, "w0.0", pid], Message("bob", "alice", "fills it"), None)
    waiting = asyncio.ensure_future(b.put(OID, [10, "w0.0", pid], Message("bob", "alice", "waits"), None))
    for _ in range(100):  # until alice's worker holds the put, waiting for room
        if a.tasks:
            break
        await asyncio.sleep(0.005)
    assert not waiting.done() and len(a.tasks) == 1
    a.links["w1.0"].transport.close()  # the connection bob's puts took (alice's worker opened it)
    with pytest.raises(MailboxSend, match=f"inbox of 'alice' was hosted by a worker that was lost "
                                          f"\\(worker {pid} closed its connection\\)"):
        await asyncio.wait_for(waiting, 5)
    await asyncio.sleep(0.01)
    assert not a.tasks and not b.pending and not a.links and not b.links
    assert alice.qsize() == 1 and alice.try_recv().content == "fills it"  # the withdrawn put never got in
    assert bob.try_recv().content == "hello"


async def test_a_phello_is_taken_once_and_only_on_a_connection_that_was_made_to_us(pair: tuple[Peers, Peers]) -> None:
    a, b = pair
    pid = os.getpid()
    b.host(OID, "bob", 20, 4)
    assert await a.put(OID, [20, "w1.0", pid], Message("alice", "bob", 1), None)
    (to_a,) = b.incoming
    b.on_hello(to_a, "w7.0")  # a second phello on it: refused, the first name stays
    a.on_hello(a.links["w1.0"], "w7.0")  # on a connection we opened: refused
    assert to_a.host == "w0.0" and a.links["w1.0"].host == "w1.0"
    assert (a.rejected, b.rejected) == (1, 1)


async def test_an_answer_counts_only_on_the_connection_its_put_left_on(pair: tuple[Peers, Peers]) -> None:
    a, b = pair
    pid = os.getpid()
    bob = b.host(OID, "bob", 20, 1)
    assert await a.put(OID, [20, "w1.0", pid], Message("alice", "bob", "fills it"), None)
    waiting = asyncio.ensure_future(a.put(OID, [20, "w1.0", pid], Message("alice", "bob", "waits"), None))
    for _ in range(100):
        if b.tasks:
            break
        await asyncio.sleep(0.005)
    (rid,) = a.pending
    a.on_answer(_Link(a, "w9.0"), {"t": "putr", "rid": rid, "ok": True})  # another worker's connection
    assert a.rejected == 1 and not waiting.done()
    assert bob.try_recv().content == "fills it"  # room: the waiting put gets in and is answered on its link
    assert await asyncio.wait_for(waiting, 5) is True
    assert bob.try_recv().content == "waits"
