"""Runtime: independent tool calls of one proposal run side by side (issue 12).

A group is a run of consecutive tool calls where every action after the first
has no preconditions and no state dependencies, only the last may abort, and no
idempotent call repeats one of the group. Results keep action order; retries,
timeouts and failure behaviours stay per action; abort and rollback are as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from carmulti import Action, ActionProposal, ActionStatus, FailureBehavior, Precondition, ToolError

SKIP = FailureBehavior.SKIP


def proposal(*actions: Action, pid: str = "p1") -> ActionProposal:
    return ActionProposal(id=pid, source="test", actions=list(actions))


def call(aid: str, tool: str = "t", behavior: FailureBehavior = SKIP, **params: Any) -> Action:
    return Action.tool_call(aid, tool, params, failure_behavior=behavior)


class Meter:
    """A tool executor that records starts and finishes and the peak number of calls in flight.

    Parameters: ``sleep`` (seconds), ``fail`` (raise ToolError), ``fail_times`` (fail the first n attempts
    of this action id), ``write`` (a key it sets in ``state``).
    """

    def __init__(self, state: Any = None) -> None:
        self.state = state
        self.inflight = 0
        self.peak = 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.attempts: dict[str, int] = {}

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        aid = params.get("id", tool)
        self.attempts[aid] = self.attempts.get(aid, 0) + 1
        self.started.append(aid)
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(params.get("sleep", 0.0))
            if params.get("fail") or self.attempts[aid] <= params.get("fail_times", 0):
                raise ToolError(f"{aid} failed")
            if "write" in params:
                self.state.set(params["write"], True, "tool")
            return f"{aid} done"
        finally:
            self.inflight -= 1
            self.finished.append(aid)


def runtime(infra, executor, tools=("t", "u")):
    rt = infra.make_runtime(agent="a")
    rt.retry_base_delay_s = 0.001
    for t in tools:
        rt.register_tool(t)
    rt.set_executor(executor)
    return rt


class Barrier:
    """Every call waits until ``n`` calls have started: calls made one by one time out."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.all_in = asyncio.Event()

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.arrived += 1
        if self.arrived == self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 2.0)
        return params["i"]


async def test_independent_tool_calls_run_side_by_side(infra):
    rt = runtime(infra, Barrier(4))
    res = await rt.execute(proposal(*[Action.tool_call(f"a{i}", "t", {"i": i}, failure_behavior=SKIP)
                                      for i in range(4)]))
    assert res.all_succeeded
    assert [r.output for r in res.results] == [0, 1, 2, 3]


async def test_results_keep_action_order_whatever_finishes_first(infra):
    m = Meter()
    rt = runtime(infra, m)
    res = await rt.execute(proposal(*[call(f"a{i}", id=f"a{i}", sleep=0.04 * (3 - i)) for i in range(4)]))
    assert [r.action_id for r in res.results] == ["a0", "a1", "a2", "a3"]
    assert [r.output for r in res.results] == ["a0 done", "a1 done", "a2 done", "a3 done"]
    assert m.started == ["a0", "a1", "a2", "a3"]  # started in list order
    assert m.finished == ["a3", "a2", "a1", "a0"]  # ran side by side
    assert m.peak == 4
    assert rt.tool_calls == 4


async def test_tools_used_is_in_first_use_order(infra):
    m = Meter()
    rt = runtime(infra, m)
    await rt.execute(proposal(call("a0", "u", id="a0", sleep=0.02), call("a1", "t", id="a1"), call("a2", "u", id="a2")))
    assert rt.tools_used == ["u", "t"]


async def test_calls_that_abort_by_default_still_run_one_by_one(infra):
    m = Meter()
    rt = runtime(infra, m)
    res = await rt.execute(proposal(*[Action.tool_call(f"a{i}", "t", {"id": f"a{i}", "sleep": 0.01})
                                      for i in range(3)]))
    assert res.all_succeeded and m.peak == 1


async def test_an_aborting_call_closes_its_group_and_still_skips_and_rolls_back(infra):
    m = Meter()
    rt = runtime(infra, m)
    res = await rt.execute(proposal(
        Action.state_write("w", "mine", 1),
        call("s1", id="s1", sleep=0.03),
        call("s2", id="s2", fail=True),
        call("boom", behavior=FailureBehavior.ABORT, id="boom", fail=True),
        call("later", id="later"),
    ))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.SUCCEEDED, ActionStatus.FAILED,
                                               ActionStatus.FAILED, ActionStatus.SKIPPED]
    assert m.peak == 3  # s1, s2 and boom side by side; "later" never ran
    assert "later" not in m.started
    assert "boom" in res.results[4].error
    assert not infra.state.exists("mine")  # the proposal's own write was undone
    assert infra.log.filter(kind="state_rollback")


async def test_rejected_aborting_call_at_the_end_of_a_group_skips_the_rest(infra):
    m = Meter()
    rt = runtime(infra, m)
    res = await rt.execute(proposal(call("s1", id="s1"), call("bad", "nope", behavior=FailureBehavior.ABORT),
                                    call("after", id="after")))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.REJECTED, ActionStatus.SKIPPED]
    assert m.started == ["s1"]


async def test_rejected_skip_call_inside_a_group_does_not_stop_the_others(infra):
    m = Meter()
    rt = runtime(infra, m)
    res = await rt.execute(proposal(call("s1", id="s1"), call("bad", "nope"), call("s2", id="s2")))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.REJECTED, ActionStatus.SUCCEEDED]
    assert sorted(m.started) == ["s1", "s2"]


async def test_a_call_with_a_precondition_waits_for_the_calls_before_it(infra):
    """Its precondition is checked after the earlier calls (which may change the state) finished."""
    m = Meter(infra.state)
    rt = runtime(infra, m)
    needs = Action.tool_call("needs", "t", {"id": "needs"}, failure_behavior=SKIP,
                             preconditions=[Precondition("made.by.tool", "exists")])
    res = await rt.execute(proposal(call("maker", id="maker", sleep=0.03, write="made.by.tool"), needs))
    assert res.all_succeeded
    assert m.peak == 1 and m.started == ["maker", "needs"]


async def test_a_call_with_state_dependencies_waits_too(infra):
    m = Meter()
    rt = runtime(infra, m)
    dep = Action.tool_call("dep", "t", {"id": "dep"}, failure_behavior=SKIP, state_dependencies=["k"])
    await rt.execute(proposal(call("first", id="first", sleep=0.02), dep))
    assert m.peak == 1


async def test_state_actions_split_groups(infra):
    m = Meter()
    rt = runtime(infra, m)
    res = await rt.execute(proposal(call("a", id="a", sleep=0.02), Action.state_write("w", "k", 1),
                                    call("b", id="b", sleep=0.02)))
    assert res.all_succeeded and m.peak == 1


async def test_a_repeated_idempotent_call_is_still_served_from_the_cache(infra):
    m = Meter()
    rt = runtime(infra, m)
    a = Action.tool_call("a", "t", {"id": "x"}, failure_behavior=SKIP, idempotent=True)
    b = Action.tool_call("b", "t", {"id": "x"}, failure_behavior=SKIP, idempotent=True)
    res = await rt.execute(proposal(a, b))
    assert [r.output for r in res.results] == ["x done", "x done"]
    assert m.attempts == {"x": 1}
    assert len(infra.log.filter(kind="action_deduplicated")) == 1


async def test_retries_and_timeouts_stay_per_action(infra):
    m = Meter()
    rt = runtime(infra, m)
    flaky = Action.tool_call("flaky", "t", {"id": "flaky", "fail_times": 2}, failure_behavior=FailureBehavior.RETRY)
    slow = Action.tool_call("slow", "t", {"id": "slow", "sleep": 1.0}, failure_behavior=SKIP, timeout_ms=30)
    fine = call("fine", id="fine")
    res = await rt.execute(proposal(flaky, slow, fine))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.FAILED, ActionStatus.SUCCEEDED]
    assert res.results[0].attempts == 3
    assert res.results[1].error == "tool 't' timed out after 30ms"
    assert res.results[2].attempts == 1


async def test_cancelling_the_proposal_cancels_every_call_in_flight(infra):
    m = Meter()
    rt = runtime(infra, m)
    task = asyncio.ensure_future(rt.execute(proposal(call("a", id="a", sleep=10), call("b", id="b", sleep=10))))
    while m.inflight < 2:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert m.inflight == 0 and sorted(m.finished) == ["a", "b"]


async def test_events_name_every_action_of_a_group(infra):
    rt = runtime(infra, Meter())
    await rt.execute(proposal(call("a", id="a"), call("b", id="b")))
    assert sorted(e.action_id for e in infra.log.filter(kind="action_succeeded")) == ["a", "b"]
    assert [e.kind for e in infra.log.events()][-1] == "proposal_completed"
