"""Mailbox (by name) and MessageRouter (by id) share one router: the same behaviour through both APIs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from carmulti import AgentMessage, Mailbox, MailboxFull, MailboxSend, Message, MessageRouter


@dataclass
class Api:
    """One router API: how to build it, address an agent and word a message."""

    make: Callable[[int], Any]
    key: Any  # the registered agent
    unknown: Any  # an agent never registered
    msg: Callable[[Any, Any], Any]  # (to, content) -> message
    unknown_text: str
    capacity_attr: str


MAILBOX = Api(lambda n: Mailbox(buffer_size=n), "bob", "ghost", lambda to, c: Message("alice", to, c),
              "mailbox send error: no agent 'ghost'", "buffer_size")
ROUTER = Api(lambda n: MessageRouter(inbox_capacity=n), 7, 99, lambda to, c: AgentMessage(1, to, c),
             "mailbox send error: agent 99 not registered", "inbox_capacity")


@pytest.fixture(params=[MAILBOX, ROUTER], ids=["Mailbox", "MessageRouter"])
def api(request: pytest.FixtureRequest) -> Api:
    return request.param


async def _full_with_a_waiting_sender(api: Api, kept: str, waiting: str) -> tuple[Any, Any, asyncio.Future[None]]:
    """A router whose one-message inbox holds ``kept`` while a sender waits to deliver ``waiting``."""
    router = api.make(1)
    inbox = router.register(api.key)
    await router.send(api.msg(api.key, kept))
    blocked = asyncio.ensure_future(router.send(api.msg(api.key, waiting)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # full: the sender waits
    return router, inbox, blocked


async def test_send_and_recv_in_order(api):
    router = api.make(4)
    inbox = router.register(api.key)
    assert getattr(router, api.capacity_attr) == 4 and inbox.capacity == 4 and inbox.name == str(api.key)
    for i in range(4):
        await router.send(api.msg(api.key, i))
    assert [(await inbox.recv(timeout_s=1)).content for _ in range(4)] == [0, 1, 2, 3]
    assert inbox.try_recv() is None


async def test_unknown_recipient_text(api):
    router = api.make(2)
    with pytest.raises(MailboxSend) as ei:
        await router.send(api.msg(api.unknown, "x"))
    assert str(ei.value) == api.unknown_text
    assert not isinstance(ei.value, MailboxFull)


async def test_backpressure_then_timeout_drops_nothing(api):
    router, inbox, blocked = await _full_with_a_waiting_sender(api, "kept", "waits")
    assert (await inbox.recv()).content == "kept"
    await asyncio.wait_for(blocked, 5)
    with pytest.raises(MailboxFull) as ei:
        await router.send(api.msg(api.key, "refused"), timeout_s=0.05)
    assert (ei.value.to, ei.value.capacity, ei.value.timeout_s) == (str(api.key), 1, 0.05)
    assert (await inbox.recv()).content == "waits"
    assert inbox.qsize() == 0  # the refused message never arrived


async def test_unregister_fails_blocked_senders_and_later_sends(api):
    router, inbox, blocked = await _full_with_a_waiting_sender(api, "kept", "lost")
    router.unregister(api.key)
    with pytest.raises(MailboxSend, match="was closed while the message waited for room"):
        await asyncio.wait_for(blocked, 5)
    assert inbox.closed and (await inbox.recv()).content == "kept"  # accepted messages stay readable
    assert inbox.qsize() == 0
    with pytest.raises(MailboxSend, match="not registered|no agent"):
        await router.send(api.msg(api.key, "late"))
    router.unregister(api.key)  # unregistering twice is a no-op


async def test_register_again_replaces_and_closes_the_old_inbox(api):
    router, old, blocked = await _full_with_a_waiting_sender(api, "old", "blocked")
    new = router.register(api.key)
    with pytest.raises(MailboxSend, match="closed"):
        await asyncio.wait_for(blocked, 5)
    assert new is not old and old.closed and not new.closed
    with pytest.raises(MailboxSend, match="is closed"):
        await old._put(api.msg(api.key, "x"), None)
    await router.send(api.msg(api.key, "new"))
    assert (await old.recv()).content == "old" and (await new.recv()).content == "new"


async def test_cancelled_sender_delivers_nothing(api):
    _, inbox, blocked = await _full_with_a_waiting_sender(api, "first", "cancelled")
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert (await inbox.recv()).content == "first"
    assert inbox.try_recv() is None


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "4", None])
def test_capacity_validation(api, bad):
    with pytest.raises(ValueError, match=f"must be an int >= 1, got {bad!r}"):
        api.make(bad)


def test_registry_is_per_router_and_counts(api):
    a, b = api.make(2), api.make(2)
    a.register(api.key)
    assert len(a._inboxes) == 1 and len(b._inboxes) == 0
    if isinstance(a, MessageRouter):
        assert a.agent_count() == 1 and b.agent_count() == 0
    else:
        assert a.names() == [api.key] and api.key in a and api.key not in b


def test_mailbox_and_router_stay_distinct_types():
    """The process executor dispatches worker calls by class name; neither router is the other."""
    assert type(Mailbox()).__name__ == "Mailbox" and type(MessageRouter()).__name__ == "MessageRouter"
    assert not isinstance(MessageRouter(), Mailbox) and not isinstance(Mailbox(), MessageRouter)


def test_messaging_lives_in_the_mailbox_module_and_the_root():
    import carmulti
    import carmulti.mailbox as mailbox
    import carmulti.pool as pool

    for name in ("AgentId", "AgentMessage", "MessageRouter", "PooledMailbox"):
        assert getattr(mailbox, name) is getattr(carmulti, name)
        assert name not in pool.__all__  # the pool uses messaging; it does not own or export it
