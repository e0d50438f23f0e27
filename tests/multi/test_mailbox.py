"""Mailbox: named bounded inboxes, backpressure, broadcast, timeouts and error texts."""

from __future__ import annotations

import asyncio
from datetime import timezone

import pytest

from carmulti import Mailbox, MailboxFull, MailboxSend, MailboxTimeout, Message, MultiError


async def test_send_and_recv():
    mb = Mailbox()
    inbox = mb.register("bob")
    await mb.send(Message("alice", "bob", "hi"))
    msg = await inbox.recv(timeout_s=1)
    assert (msg.from_agent, msg.to, msg.content, msg.kind) == ("alice", "bob", "hi", "text")
    assert msg.timestamp.tzinfo is not None and msg.timestamp.utcoffset() == timezone.utc.utcoffset(None)


async def test_send_to_unknown_agent():
    mb = Mailbox()
    with pytest.raises(MailboxSend) as ei:
        await mb.send(Message("alice", "ghost", "hi"))
    assert str(ei.value) == "mailbox send error: no agent 'ghost'"
    assert isinstance(ei.value, MultiError)


async def test_messages_arrive_in_order():
    mb = Mailbox()
    inbox = mb.register("b")
    for i in range(10):
        await mb.send(Message("a", "b", i))
    assert [(await inbox.recv()).content for _ in range(10)] == list(range(10))


async def test_full_inbox_blocks_sender_until_drained():
    mb = Mailbox(buffer_size=2)
    inbox = mb.register("b")
    await mb.send(Message("a", "b", 1))
    await mb.send(Message("a", "b", 2))
    blocked = asyncio.ensure_future(mb.send(Message("a", "b", 3)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # backpressure: the sender waits
    assert inbox.qsize() == 2
    assert (await inbox.recv()).content == 1
    await asyncio.wait_for(blocked, 5)
    assert [(await inbox.recv()).content for _ in range(2)] == [2, 3]  # nothing dropped


async def test_send_timeout_raises_mailbox_full_and_drops_nothing():
    mb = Mailbox(buffer_size=1)
    inbox = mb.register("b")
    await mb.send(Message("a", "b", "kept"))
    with pytest.raises(MailboxFull) as ei:
        await mb.send(Message("a", "b", "refused"), timeout_s=0.05)
    err = ei.value
    assert isinstance(err, MailboxSend)
    assert str(err).startswith("mailbox send error: ")
    assert (err.to, err.capacity) == ("b", 1)
    assert inbox.qsize() == 1
    assert (await inbox.recv()).content == "kept"
    assert inbox.try_recv() is None


async def test_recv_timeout():
    inbox = Mailbox().register("lonely")
    with pytest.raises(MailboxTimeout) as ei:
        await inbox.recv(timeout_s=0.02)
    assert str(ei.value) == "mailbox recv timeout for agent 'lonely'"
    assert ei.value.agent == "lonely"


async def test_broadcast_reaches_everyone_including_sender():
    mb = Mailbox()
    boxes = {n: mb.register(n) for n in ("a", "b", "c")}
    n = await mb.broadcast(Message("a", "*", "news", kind="announce"))
    assert n == 3
    for name, box in boxes.items():
        msg = box.try_recv()
        assert (msg.to, msg.content, msg.kind, msg.from_agent) == (name, "news", "announce", "a")
        assert box.try_recv() is None


async def test_unregister_and_reregister():
    mb = Mailbox()
    old = mb.register("b")
    new = mb.register("b")  # replaces the old inbox
    await mb.send(Message("a", "b", "x"))
    assert new.try_recv().content == "x" and old.try_recv() is None
    assert "b" in mb and mb.names() == ["b"]
    mb.unregister("b")
    assert "b" not in mb
    with pytest.raises(MailboxSend, match="no agent 'b'"):
        await mb.send(Message("a", "b", "y"))


async def test_inbox_async_iteration():
    mb = Mailbox()
    inbox = mb.register("b")
    for i in range(3):
        await mb.send(Message("a", "b", i))
    got = []
    async for msg in inbox:
        got.append(msg.content)
        if len(got) == 3:
            break
    assert got == [0, 1, 2]


def test_buffer_size_validation():
    assert Mailbox().buffer_size == 64
    assert Mailbox(3).register("x").capacity == 3
    with pytest.raises(ValueError):
        Mailbox(buffer_size=0)


def test_message_round_trip():
    m = Message("a", "b", {"k": [1]}, kind="json")
    assert Message.from_dict(m.to_dict()) == m


# -- the inbox channel (deque + direct hand-off) -------------------------------------------------------------------

async def test_timed_out_and_cancelled_waits_leave_no_waiter_behind():
    """An agent polling an empty inbox with a timeout for hours must not grow it."""
    mb = Mailbox(buffer_size=1)
    inbox = mb.register("b")
    for _ in range(200):
        with pytest.raises(MailboxTimeout):
            await inbox.recv(timeout_s=0)
    waiter = asyncio.ensure_future(inbox.recv())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(inbox._getters) == 0
    await mb.send(Message("a", "b", 1))  # fills the one slot
    for _ in range(50):
        with pytest.raises(MailboxFull):
            await mb.send(Message("a", "b", 2), timeout_s=0)
    assert len(inbox._putters) == 0 and inbox.qsize() == 1
    assert (await inbox.recv()).content == 1 and inbox.try_recv() is None  # the refused messages never arrive


async def test_message_handed_to_a_cancelled_receiver_is_not_lost():
    mb = Mailbox()
    inbox = mb.register("b")
    first = asyncio.ensure_future(inbox.recv())
    await asyncio.sleep(0)  # waiting
    await mb.send(Message("a", "b", "kept"))  # handed straight to ``first``'s wait
    first.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    msg = await inbox.recv(timeout_s=1)
    assert msg.content == "kept" and inbox.qsize() == 0


async def test_waiting_senders_get_in_in_send_order_and_a_timed_out_one_drops_out():
    mb = Mailbox(buffer_size=1)
    inbox = mb.register("b")
    await mb.send(Message("a", "b", 0))
    s1 = asyncio.ensure_future(mb.send(Message("a", "b", 1)))
    s2 = asyncio.ensure_future(mb.send(Message("a", "b", 2), timeout_s=0.01))
    s3 = asyncio.ensure_future(mb.send(Message("a", "b", 3)))
    await asyncio.sleep(0.05)  # s2 times out while waiting for room
    with pytest.raises(MailboxFull):
        await s2
    got = [(await inbox.recv(timeout_s=1)).content for _ in range(3)]
    await asyncio.gather(s1, s3)
    assert got == [0, 1, 3] and inbox.qsize() == 0

