"""AgentContext (copy-on-write overlay) and TaskScope (context-local current agent)."""

from __future__ import annotations

import asyncio

from carcore import StateStore
from carmulti import AgentContext, TaskScope


def test_reads_fall_through_writes_stay_local_merge_publishes():
    parent = StateStore()
    parent.set("p", 1)
    ctx = AgentContext("agent-a", parent)
    assert ctx.agent_name == "agent-a"
    assert ctx.get("p") == 1
    ctx.set("p", 2)
    ctx.set("new", "x")
    assert ctx.get("p") == 2 and parent.get("p") == 1
    assert not parent.exists("new") and ctx.exists("new")
    sets, deletes = ctx.changes()
    assert sets == {"p": 2, "new": "x"} and deletes == []
    ctx.merge_to_parent()
    assert parent.get("p") == 2 and parent.get("new") == "x"


def test_local_delete_hides_parent_key_until_merged():
    parent = StateStore()
    parent.set("gone", 1)
    ctx = AgentContext("a", parent)
    ctx.delete("gone")
    assert not ctx.exists("gone") and parent.exists("gone")
    ctx.merge_to_parent()
    assert not parent.exists("gone")


def test_discard_drops_local_changes():
    parent = StateStore()
    ctx = AgentContext("a", parent)
    ctx.set("k", 1)
    ctx.discard()
    ctx.merge_to_parent()
    assert not parent.exists("k")


def test_merged_writes_are_attributed_to_the_agent():
    parent = StateStore()
    ctx = AgentContext("writer-x", parent)
    ctx.set("k", 1)
    ctx.merge_to_parent()
    (t,) = parent.transitions()
    assert t.key == "k" and t.writer == "writer-x"


def test_two_contexts_are_isolated_from_each_other():
    parent = StateStore()
    a, b = AgentContext("a", parent), AgentContext("b", parent)
    a.set("k", "a")
    assert b.get("k") is None
    b.set("k", "b")
    assert a.get("k") == "a"


async def test_task_scope_outside_and_inside():
    assert TaskScope.agent_name() is None
    assert TaskScope.current() is None
    assert TaskScope.try_with(lambda c: c.agent_name) is None
    ctx = AgentContext("scoped", StateStore())

    async def inner():
        await asyncio.sleep(0)
        return TaskScope.agent_name(), TaskScope.try_with(lambda c: c.agent_name), TaskScope.current()

    name, via_try, cur = await TaskScope.run(ctx, inner())
    assert name == "scoped" and via_try == "scoped" and cur is ctx
    assert TaskScope.agent_name() is None  # restored afterwards


async def test_task_scopes_of_concurrent_agents_do_not_mix():
    async def agent(name: str, delay: float) -> str | None:
        async def body():
            await asyncio.sleep(delay)
            return TaskScope.agent_name()

        return await TaskScope.run(AgentContext(name, StateStore()), body())

    got = await asyncio.gather(agent("a", 0.03), agent("b", 0.0), agent("c", 0.01))
    assert got == ["a", "b", "c"]


async def test_nested_scopes_restore_outer():
    outer = AgentContext("outer", StateStore())
    inner = AgentContext("inner", StateStore())

    async def body():
        names = [TaskScope.agent_name()]
        names.append(await TaskScope.run(inner, _name()))
        names.append(TaskScope.agent_name())
        return names

    async def _name():
        return TaskScope.agent_name()

    assert await TaskScope.run(outer, body()) == ["outer", "inner", "outer"]
