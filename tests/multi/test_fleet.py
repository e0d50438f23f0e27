"""Fleet: independent missions (the system prompt is the task), outputs in agent order, counts,
budget gating, the fleet's own timeout, a shared mailbox; on every executor."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from carmulti import (
    AgentOutput,
    AgentSpec,
    BudgetLimits,
    Fleet,
    FleetResult,
    MailboxSend,
    Message,
    is_budget_skipped,
)

from .doubles import MetaRunner, spec


async def test_each_agent_runs_its_own_mission(make_infra):
    infra = make_infra()
    fleet = Fleet([spec("researcher", "Research competitor pricing"), spec("analyst", "Analyze market trends")])
    res = await fleet.run(MetaRunner(), infra)
    assert isinstance(res, FleetResult)
    assert [(o.name, o.answer) for o in res.outputs] == [("researcher", "Research competitor pricing"),
                                                         ("analyst", "Analyze market trends")]
    assert (res.succeeded, res.failed) == (2, 0)
    assert res.duration_ms > 0
    assert infra.state.get("agent.analyst.answer") == "Analyze market trends"


async def test_failures_and_budget_skips_count_as_failed_in_agent_order(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=3))
    agents = [spec("a", "m"), spec("b", "m", **{"raise": "lost"}), spec("c", "m", sleep=0.05), spec("d", "m")]
    res = await Fleet(agents).run(MetaRunner(), infra)
    assert [o.name for o in res.outputs] == ["a", "b", "c", "d"]
    assert [o.error for o in res.outputs[:3]] == [None, "lost", None]
    assert is_budget_skipped(res.outputs[3])
    assert (res.succeeded, res.failed) == (2, 2)
    assert res.succeeded + res.failed == len(agents)


async def test_empty_fleet(make_infra):
    res = await Fleet([]).run(MetaRunner(), make_infra())
    assert (res.outputs, res.succeeded, res.failed) == ([], 0, 0)


async def test_the_fleet_timeout_bounds_each_agent(make_infra):
    infra = make_infra()
    res = await Fleet([spec("slow", "m", sleep=30), spec("fast", "m")], agent_timeout_s=0.3).run(MetaRunner(), infra)
    assert [o.error for o in res.outputs] == ["timeout after 0.3s", None]
    assert (res.succeeded, res.failed) == (1, 1)
    assert res.duration_ms < 10_000


async def test_the_shorter_of_the_fleet_and_infra_timeouts_applies(make_infra):
    infra = make_infra(agent_timeout_s=0.2)
    res = await Fleet([spec("slow", "m", sleep=30)], agent_timeout_s=60).run(MetaRunner(), infra)
    assert res.outputs[0].error == "timeout after 0.2s"
    res = await Fleet([spec("slow", "m", sleep=30)]).with_timeout(0.1).run(MetaRunner(), make_infra(agent_timeout_s=60))
    assert res.outputs[0].error == "timeout after 0.1s"


class ChatRunner:
    """``alice`` sends to ``bob`` through the fleet's shared mailbox; bob waits for it."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        if spec.name == "bob":
            inbox = mailbox.register("bob")
            msg = await inbox.recv(timeout_s=10)
            return f"bob got {msg.content!r} from {msg.from_agent} while on: {task}"
        for _ in range(500):
            if "bob" in mailbox:
                break
            await asyncio.sleep(0.01)
        await mailbox.send(Message("alice", "bob", "hi"))
        try:
            await mailbox.send(Message("alice", "carol", "hi"))
        except MailboxSend as exc:
            return str(exc)
        return "sent"


async def test_agents_share_one_mailbox(make_infra):
    res = await Fleet([AgentSpec("bob", "watch"), AgentSpec("alice", "talk")]).run(ChatRunner(), make_infra())
    assert [o.answer for o in res.outputs] == ["bob got 'hi' from alice while on: watch",
                                               "mailbox send error: no agent 'carol'"]


def test_arguments_are_checked():
    with pytest.raises(TypeError, match=r"Fleet agents\[0\] must be an AgentSpec"):
        Fleet(["a"])  # type: ignore[list-item]
    for bad in (0, -1, True, float("nan")):
        with pytest.raises(ValueError, match="Fleet agent_timeout_s must be a finite number of seconds > 0"):
            Fleet([], agent_timeout_s=bad)
    with pytest.raises(ValueError):
        Fleet([]).with_timeout(None)  # type: ignore[arg-type]
    f = Fleet([AgentSpec("a")])
    g = f.with_timeout(5)
    assert (f.agent_timeout_s, g.agent_timeout_s) == (None, 5)


def test_to_dict():
    d = FleetResult([AgentOutput("a", "x")], 1.5, 1, 0).to_dict()
    assert list(d) == ["outputs", "duration_ms", "succeeded", "failed"]
