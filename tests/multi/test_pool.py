"""AgentPool + MessageRouter (seed 004 with its defects fixed)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from carmulti import (
    AgentMessage,
    AgentOutput,
    AgentPool,
    AgentSpec,
    BudgetLimits,
    MailboxSend,
    MessageRouter,
    PoolAtCapacity,
    is_budget_skipped,
)
from carmulti.testing import EchoRunner

from .doubles import MetaRunner, spec


class InboxRunner:
    """Waits for one message in its pooled inbox and answers with its content."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        msg = await mailbox.inbox.recv(timeout_s=10)
        return AgentOutput(name=spec.name, answer=f"{spec.name} got {msg.content} from {msg.from_id}", turns=1)


async def spawn(pool: AgentPool, s: AgentSpec, task: str = "T") -> int:
    r = pool.spawn(s, task)
    if inspect.isawaitable(r):
        r = await r
    return r


async def test_ids_start_at_one_and_join_all(make_infra):
    pool = AgentPool(EchoRunner("{task}"), 4, infra=make_infra())
    ids = [await spawn(pool, spec(f"a{i}"), f"task {i}") for i in range(3)]
    assert ids == [1, 2, 3]
    assert pool.max_concurrent == 4
    outs = await pool.join_all()
    assert set(outs) == {1, 2, 3}
    assert {i: o.answer for i, o in outs.items()} == {1: "task 0", 2: "task 1", 3: "task 2"}
    assert outs[2].name == "a1"
    assert pool.active_count == 0
    assert await pool.join_next() is None


async def test_spawn_queues_at_capacity_fifo(make_infra):
    pool = AgentPool(MetaRunner(), 1, infra=make_infra())
    ids = [await spawn(pool, spec(f"a{i}", sleep=0.01)) for i in range(4)]
    assert ids == [1, 2, 3, 4]
    assert pool.active_count == 4  # one running + three queued
    order = []
    while (nxt := await pool.join_next()) is not None:
        order.append(nxt[0])
        assert nxt[1].succeeded
    assert order == [1, 2, 3, 4]  # with one slot, agents start (and finish) in spawn order
    assert pool.active_count == 0


async def test_try_spawn_raises_at_capacity_and_consumes_no_id(make_infra):
    pool = AgentPool(MetaRunner(), 1, infra=make_infra())
    first = pool.try_spawn(spec("a", sleep=0.2), "T")
    assert first == 1
    with pytest.raises(PoolAtCapacity) as ei:
        pool.try_spawn(spec("b"), "T")
    assert str(ei.value) == "agent pool at capacity (1/1)"
    await pool.join_all()
    assert pool.try_spawn(spec("c"), "T") == 2
    outs = await pool.join_all()
    assert list(outs) == [2]


async def test_fan_out(make_infra):
    pool = AgentPool(EchoRunner("{task}"), 2, infra=make_infra())
    r = pool.fan_out([(spec(f"a{i}"), f"t{i}") for i in range(5)])
    ids = await r if inspect.isawaitable(r) else r
    assert ids == [1, 2, 3, 4, 5]
    outs = await pool.join_all()
    assert [outs[i].answer for i in ids] == ["t0", "t1", "t2", "t3", "t4"]


async def test_join_next_yields_in_completion_order(make_infra):
    pool = AgentPool(MetaRunner(), 3, infra=make_infra())
    slow = await spawn(pool, spec("slow", sleep=0.4, answer="S"))
    fast = await spawn(pool, spec("fast", answer="F"))
    first = await pool.join_next()
    second = await pool.join_next()
    assert first[0] == fast and first[1].answer == "F"
    assert second[0] == slow and second[1].answer == "S"
    assert await pool.join_next() is None


async def test_abort_all_yields_aborted_outputs(make_infra):
    pool = AgentPool(MetaRunner(), 1, infra=make_infra())
    ids = [await spawn(pool, spec(f"a{i}", sleep=30)) for i in range(3)]
    await asyncio.sleep(0.05)
    pool.abort_all()
    outs = await asyncio.wait_for(pool.join_all(), 10)
    assert set(outs) == set(ids)
    assert all(o.error == "aborted" and not o.succeeded for o in outs.values())
    assert pool.active_count == 0


async def test_router_send_reaches_pooled_agent_inbox(make_infra):
    pool = AgentPool(InboxRunner(), 2, infra=make_infra())
    aid = await spawn(pool, AgentSpec("listener"))
    router = pool.router()
    assert router.agent_count() == 1
    await router.send(AgentMessage(0, aid, "hello"))
    outs = await pool.join_all()
    assert outs[aid].answer == "listener got hello from 0"
    assert router.agent_count() == 0  # unregistered when it finished


async def test_message_to_queued_agent_is_delivered(make_infra):
    pool = AgentPool(InboxRunner(), 1, infra=make_infra())
    a = await spawn(pool, AgentSpec("first"))
    b = await spawn(pool, AgentSpec("second"))  # queued behind "first"
    router = pool.router()
    await router.send(AgentMessage(0, b, "early"))
    await router.send(AgentMessage(0, a, "now"))
    outs = await pool.join_all()
    assert outs[a].answer == "first got now from 0"
    assert outs[b].answer == "second got early from 0"


async def test_router_send_to_unknown_id(make_infra):
    pool = AgentPool(EchoRunner("{task}"), 1, infra=make_infra())
    with pytest.raises(MailboxSend) as ei:
        await pool.router().send(AgentMessage(0, 99, "hi"))
    assert "not registered" in str(ei.value)
    assert str(ei.value).startswith("mailbox send error: ")


async def test_crashed_agent_yields_its_id_with_an_error(make_infra):
    pool = AgentPool(MetaRunner(), 2, infra=make_infra())
    bad = await spawn(pool, spec("bad", **{"raise": "agent crashed"}))
    good = await spawn(pool, spec("good", answer="ok"))
    outs = await pool.join_all()
    assert set(outs) == {bad, good}
    assert outs[bad].error == "agent crashed" and outs[bad].name == "bad"
    assert outs[good].answer == "ok"


async def test_pool_agents_are_budget_gated(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    pool = AgentPool(EchoRunner("{task}"), 5, infra=infra)
    ids = [await spawn(pool, spec(f"a{i}")) for i in range(3)]
    outs = await pool.join_all()
    assert sum(is_budget_skipped(outs[i]) for i in ids) == 1
    assert infra.budget.snapshot().agents_started == 2


async def test_pool_without_infra_uses_a_fresh_local_one():
    pool = AgentPool(MetaRunner(), 2)
    try:
        await spawn(pool, spec("a", answer="x"))
        outs = await pool.join_all()
        assert outs[1].answer == "x"
        assert pool.infra.state.get("agent.a.answer") == "x"
    finally:
        await pool.infra.aclose()


class ConcurrencyTracker:
    """Counts simultaneous runs (runner-side state: local executor only)."""

    def __init__(self) -> None:
        self.current = 0
        self.max_seen = 0

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        self.current += 1
        self.max_seen = max(self.max_seen, self.current)
        try:
            await asyncio.sleep(0.02)
        finally:
            self.current -= 1
        return "done"


async def test_max_concurrent_respected_local_only():
    tracker = ConcurrencyTracker()
    pool = AgentPool(tracker, 3)
    try:
        for i in range(10):
            await spawn(pool, AgentSpec(f"a{i}"))
            assert pool.running_count <= 3
        outs = await pool.join_all()
    finally:
        await pool.infra.aclose()
    assert len(outs) == 10 and all(o.answer == "done" for o in outs.values())
    assert tracker.max_seen == 3


async def test_message_router_standalone():
    router = MessageRouter(inbox_capacity=2)
    inbox = router.register(7)
    assert router.agent_count() == 1
    await router.send(AgentMessage(1, 7, "a"))
    await router.send(AgentMessage(1, 7, "b"))
    blocked = asyncio.ensure_future(router.send(AgentMessage(1, 7, "c")))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # full inbox blocks rather than erroring
    assert (await inbox.recv()).content == "a"
    await asyncio.wait_for(blocked, 5)
    assert [(await inbox.recv()).content for _ in range(2)] == ["b", "c"]
    router.unregister(7)
    assert router.agent_count() == 0
    with pytest.raises(MailboxSend, match="agent 7 not registered"):
        await router.send(AgentMessage(1, 7, "d"))
    assert MessageRouter().inbox_capacity == 32


def test_pool_validation():
    with pytest.raises(ValueError):
        AgentPool(EchoRunner("{task}"), 0)
