"""Runtime: validation (tools, schemas, preconditions, policies), retries, timeouts, the
idempotency cache, failure behaviours, state actions on isolated overlays, events; and
``carmulti.run``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import carmulti
from carmulti import (
    Action,
    ActionProposal,
    ActionStatus,
    ActionType,
    FailureBehavior,
    Precondition,
    ProposalResult,
    ToolError,
)


class Recorder:
    """A tool executor that records calls; ``fail_times`` failures first; ``sleep`` per call."""

    def __init__(self, fail_times: int = 0, sleep: float = 0.0, exc: type[Exception] = ToolError) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_times = fail_times
        self.sleep = sleep
        self.exc = exc

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.calls.append((tool, dict(params)))
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if len(self.calls) <= self.fail_times:
            raise self.exc(f"fail #{len(self.calls)}")
        return {"tool": tool, "n": len(self.calls)}


def proposal(*actions: Action, pid: str = "p1") -> ActionProposal:
    return ActionProposal(id=pid, source="test", actions=list(actions))


def runtime_with(infra, executor=None, tools=("t",)):
    rt = infra.make_runtime()
    rt.retry_base_delay_s = 0.001
    for t in tools:
        rt.register_tool(t)
    if executor is not None:
        rt.set_executor(executor)
    return rt


async def test_tool_call_succeeds_through_executor(infra):
    ex = Recorder()
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {"x": 1})))
    assert isinstance(res, ProposalResult)
    assert res.all_succeeded
    (r,) = res.results
    assert r.action_id == "a1" and r.status is ActionStatus.SUCCEEDED and r.output == {"tool": "t", "n": 1}
    assert r.error is None and r.attempts == 1
    assert ex.calls == [("t", {"x": 1})]
    assert rt.tool_calls == 1 and rt.tools_used == ["t"]


async def test_unregistered_tool_rejected_before_execution(infra):
    ex = Recorder()
    rt = runtime_with(infra, ex, tools=("known",))
    res = await rt.execute(proposal(Action.tool_call("a1", "unknown", {})))
    assert not res.all_succeeded
    assert res.results[0].status is ActionStatus.REJECTED
    assert "not registered" in res.results[0].error
    assert "'unknown'" in res.results[0].error
    assert ex.calls == []
    assert [e.kind for e in infra.log.filter(kind="action_rejected")]


async def test_schema_validation(infra):
    ex = Recorder()
    rt = runtime_with(infra, ex, tools=())
    rt.register_tool("calc", {"type": "object", "required": ["x"],
                              "properties": {"x": {"type": "integer"}, "mode": {"enum": ["fast", "slow"]}}})
    res = await rt.execute(proposal(
        Action.tool_call("missing", "calc", {}, failure_behavior=FailureBehavior.SKIP),
        Action.tool_call("badtype", "calc", {"x": "1"}, failure_behavior=FailureBehavior.SKIP),
        Action.tool_call("boolnotint", "calc", {"x": True}, failure_behavior=FailureBehavior.SKIP),
        Action.tool_call("badenum", "calc", {"x": 1, "mode": "medium"}, failure_behavior=FailureBehavior.SKIP),
        Action.tool_call("ok", "calc", {"x": 1, "mode": "fast"}),
    ))
    statuses = [r.status for r in res.results]
    assert statuses == [ActionStatus.REJECTED] * 4 + [ActionStatus.SUCCEEDED]
    assert "missing required property 'x'" in res.results[0].error
    assert "$.x" in res.results[1].error
    assert ex.calls == [("calc", {"x": 1, "mode": "fast"})]
    assert rt.tools["calc"]["required"] == ["x"]


async def test_preconditions(infra):
    ex = Recorder()
    rt = runtime_with(infra, ex)
    act = Action.tool_call("a1", "t", {}, preconditions=[Precondition("ready", "eq", True)])
    res = await rt.execute(proposal(act))
    assert res.results[0].status is ActionStatus.REJECTED
    assert res.results[0].error.startswith("precondition failed: ready eq True")
    assert ex.calls == []
    infra.state.set("ready", True)
    res = await rt.execute(proposal(act, pid="p2"))
    assert res.all_succeeded and len(ex.calls) == 1


@pytest.mark.parametrize(
    ("op", "value", "holds"),
    [("exists", None, True), ("not_exists", None, False), ("eq", 5, True), ("neq", 5, False), ("gt", 4, True),
     ("lt", 4, False), ("gte", 5, True), ("lte", 4, False), ("contains", 5, False)],
)
def test_precondition_operators(op, value, holds):
    from carcore import StateStore

    s = StateStore()
    s.set("k", 5)
    assert Precondition("k", op, value).holds(s) is holds


def test_precondition_bad_operator():
    with pytest.raises(ValueError):
        Precondition("k", "approx")


async def test_policies_run_before_each_action(infra):
    ex = Recorder()
    infra.policies.register("no_rm", lambda a, s: "rm is forbidden" if a.tool == "rm" else None)
    rt = runtime_with(infra, ex, tools=("t", "rm"))
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {}), Action.tool_call("a2", "rm", {})))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.REJECTED]
    assert res.results[1].error == "policy violation: no_rm: rm is forbidden"
    assert ex.calls == [("t", {})]
    (ev,) = infra.log.filter(kind="policy_violation")
    assert ev.data["policy_name"] == "no_rm" and ev.action_id == "a2"


async def test_retries_follow_max_retries(infra):
    ex = Recorder(fail_times=2)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {}, max_retries=2)))
    assert res.all_succeeded
    assert res.results[0].attempts == 3 and len(ex.calls) == 3
    assert len(infra.log.filter(kind="action_retrying")) == 2


async def test_retries_exhausted_fail_with_last_error(infra):
    ex = Recorder(fail_times=5)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {}, max_retries=1)))
    r = res.results[0]
    assert r.status is ActionStatus.FAILED and r.attempts == 2 and r.error == "fail #2"
    assert len(ex.calls) == 2


async def test_no_retry_by_default(infra):
    ex = Recorder(fail_times=1)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {})))
    assert res.results[0].status is ActionStatus.FAILED and len(ex.calls) == 1


async def test_non_tool_error_text_names_the_type(infra):
    ex = Recorder(fail_times=1, exc=ValueError)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {})))
    assert res.results[0].error == "ValueError: fail #1"


async def test_timeout_ms(infra):
    ex = Recorder(sleep=5.0)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("a1", "t", {}, timeout_ms=20)))
    r = res.results[0]
    assert r.status is ActionStatus.FAILED
    assert r.error == "tool 't' timed out after 20ms"


async def test_idempotent_cache(infra):
    ex = Recorder()
    rt = runtime_with(infra, ex)
    a = Action.tool_call("a1", "t", {"q": 1, "r": [1, 2]}, idempotent=True)
    b = Action.tool_call("a2", "t", {"r": [1, 2], "q": 1}, idempotent=True)  # same params, other order
    res1 = await rt.execute(proposal(a))
    res2 = await rt.execute(proposal(b, pid="p2"))
    assert res1.results[0].output == res2.results[0].output == {"tool": "t", "n": 1}
    assert len(ex.calls) == 1
    assert len(infra.log.filter(kind="action_deduplicated")) == 1
    # Different parameters are a different key.
    await rt.execute(proposal(Action.tool_call("a3", "t", {"q": 2}, idempotent=True), pid="p3"))
    assert len(ex.calls) == 2


async def test_non_idempotent_not_cached(infra):
    ex = Recorder()
    rt = runtime_with(infra, ex)
    for pid in ("p1", "p2"):
        await rt.execute(proposal(Action.tool_call("a", "t", {"q": 1}), pid=pid))
    assert len(ex.calls) == 2


async def test_idempotency_cache_is_per_runtime(infra):
    ex = Recorder()
    a = Action.tool_call("a1", "t", {"q": 1}, idempotent=True)
    await runtime_with(infra, ex).execute(proposal(a))
    await runtime_with(infra, ex).execute(proposal(a))
    assert len(ex.calls) == 2


class OtherAgentWrites:
    """A failing tool that, meanwhile, lets 'another agent' write to the shared store."""

    def __init__(self, state: Any) -> None:
        self.state = state

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.state.set("other.agent", "kept", "someone-else")
        raise ToolError("tool broke")


async def test_abort_rolls_back_own_writes_and_skips_rest(infra):
    infra.state.set("existing", "old")
    rt = runtime_with(infra, OtherAgentWrites(infra.state))
    res = await rt.execute(proposal(
        Action.state_write("w1", "new.key", 1),
        Action.state_write("w2", "existing", "changed"),
        Action.tool_call("boom", "t", {}),
        Action.state_write("w3", "later", 3),
    ))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.SUCCEEDED,
                                               ActionStatus.FAILED, ActionStatus.SKIPPED]
    assert res.results[2].error == "tool broke"
    assert "boom" in res.results[3].error
    assert not infra.state.exists("new.key")
    assert infra.state.get("existing") == "old"
    assert not infra.state.exists("later")
    assert infra.state.get("other.agent") == "kept"  # only this proposal's writes are undone
    assert infra.log.filter(kind="state_rollback")


async def test_abort_on_rejection_skips_rest(infra):
    rt = runtime_with(infra, Recorder())
    res = await rt.execute(proposal(Action.state_write("w1", "k", 1), Action.tool_call("x", "nope", {}),
                                    Action.tool_call("y", "t", {})))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.REJECTED, ActionStatus.SKIPPED]
    assert not infra.state.exists("k")


async def test_skip_behavior_continues_and_keeps_writes(infra):
    rt = runtime_with(infra, Recorder(fail_times=1))
    res = await rt.execute(proposal(
        Action.state_write("w1", "a", 1),
        Action.tool_call("t1", "t", {}, failure_behavior=FailureBehavior.SKIP),
        Action.state_write("w2", "b", 2),
    ))
    assert [r.status for r in res.results] == [ActionStatus.SUCCEEDED, ActionStatus.FAILED, ActionStatus.SUCCEEDED]
    assert not res.all_succeeded
    assert infra.state.get("a") == 1 and infra.state.get("b") == 2


async def test_retry_behavior_retries_then_continues(infra):
    ex = Recorder(fail_times=100)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(
        Action.tool_call("t1", "t", {}, failure_behavior=FailureBehavior.RETRY),
        Action.state_write("w", "after", True),
    ))
    assert res.results[0].status is ActionStatus.FAILED
    assert res.results[0].attempts == 4  # default 3 retries when max_retries is 0
    assert len(ex.calls) == 4
    assert res.results[1].status is ActionStatus.SUCCEEDED and infra.state.get("after") is True


async def test_retry_behavior_succeeds_after_failures(infra):
    ex = Recorder(fail_times=2)
    rt = runtime_with(infra, ex)
    res = await rt.execute(proposal(Action.tool_call("t1", "t", {}, failure_behavior=FailureBehavior.RETRY,
                                                     max_retries=5)))
    assert res.all_succeeded and res.results[0].attempts == 3


async def test_no_executor_installed(infra):
    rt = runtime_with(infra, None)
    res = await rt.execute(proposal(Action.tool_call("a", "t", {})))
    assert res.results[0].status is ActionStatus.FAILED
    assert "no tool executor installed" in res.results[0].error


async def test_state_write_read_and_assertion(infra):
    rt = runtime_with(infra)
    res = await rt.execute(proposal(
        Action.state_write("w", "k", {"v": [1, 2]}),
        Action.state_read("r", "k"),
        Action.state_read("r2", "missing"),
        Action(id="as", action_type=ActionType.ASSERTION, parameters={"key": "k", "operator": "eq",
                                                                       "value": {"v": [1, 2]}}),
    ))
    assert res.all_succeeded
    assert res.results[1].output == {"v": [1, 2]}
    assert res.results[2].output is None
    assert infra.state.get("k") == {"v": [1, 2]}
    bad = await rt.execute(proposal(Action(id="as2", action_type="assertion",
                                           parameters={"key": "k", "operator": "eq", "value": 0}), pid="p2"))
    assert bad.results[0].status is ActionStatus.FAILED
    assert bad.results[0].error.startswith("assertion failed: ")


async def test_state_action_requires_key(infra):
    rt = runtime_with(infra)
    res = await rt.execute(proposal(Action(id="w", action_type=ActionType.STATE_WRITE, parameters={"value": 1})))
    assert res.results[0].status is ActionStatus.REJECTED
    assert "'key'" in res.results[0].error


async def test_state_actions_on_isolated_overlay(infra):
    infra.state.set("parent.key", "from parent")
    rt, ctx = infra.make_isolated_runtime("iso")
    res = await rt.execute(proposal(Action.state_read("r", "parent.key"), Action.state_write("w", "local.key", 42),
                                    Action.state_read("r2", "local.key")))
    assert res.all_succeeded
    assert res.results[0].output == "from parent"  # reads fall through
    assert res.results[2].output == 42
    assert not infra.state.exists("local.key")  # writes stay local
    assert ctx.get("local.key") == 42
    assert ctx.agent_name == "iso"
    ctx.merge_to_parent()
    assert infra.state.get("local.key") == 42


async def test_events_appended_to_infra_log(infra):
    rt = runtime_with(infra, Recorder())
    await rt.execute(proposal(Action.tool_call("a1", "t", {}), pid="prop-7"))
    kinds = [e.kind for e in infra.log.events()]
    assert kinds == ["proposal_received", "action_executing", "action_succeeded", "proposal_completed"]
    assert all(e.proposal_id == "prop-7" for e in infra.log.events())
    assert infra.log.filter(kind="action_succeeded")[0].action_id == "a1"
    seqs = [e.seq for e in infra.log.events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_runtimes_share_state_but_not_tools(infra):
    rt1, rt2 = infra.make_runtime(), infra.make_runtime()
    rt1.register_tool("only1")
    assert rt1.has_tool("only1") and not rt2.has_tool("only1")
    await rt1.execute(proposal(Action.state_write("w", "shared", 1)))
    res = await rt2.execute(proposal(Action.state_read("r", "shared")))
    assert res.results[0].output == 1


def test_register_tool_and_executor_validation(infra):
    rt = infra.make_runtime()
    with pytest.raises(TypeError):
        rt.register_tool("")
    with pytest.raises(TypeError):
        rt.register_tool("t", schema="not a mapping")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rt.set_executor(object())  # type: ignore[arg-type]


def test_action_validation_and_enums():
    with pytest.raises(ValueError):
        Action("a", max_retries=-1)
    with pytest.raises(ValueError):
        Action("a", timeout_ms=0)
    assert [t.value for t in ActionType] == ["tool_call", "state_write", "state_read", "assertion"]
    assert Action("a").action_type is ActionType.TOOL_CALL
    assert Action("a").failure_behavior is FailureBehavior.ABORT
    assert {b.value for b in FailureBehavior} == {"abort", "retry", "skip"}


def test_carmulti_run_uses_uvloop():
    async def probe() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert carmulti.run(probe()).startswith("uvloop")


def test_carmulti_run_returns_result_and_propagates_errors():
    async def ok() -> int:
        await asyncio.sleep(0)
        return 41 + 1

    async def bad() -> None:
        raise KeyError("x")

    assert carmulti.run(ok()) == 42
    with pytest.raises(KeyError):
        carmulti.run(bad())


def test_carmulti_run_given_the_function_instead_of_its_coroutine_says_to_call_it():
    async def main() -> int:
        return 1

    with pytest.raises(TypeError) as info:
        carmulti.run(main)  # type: ignore[arg-type]
    assert str(info.value) == "carmulti.run() takes a coroutine, got function 'main': call it: carmulti.run(main())"


def test_carmulti_run_rejects_other_non_awaitables_clearly():
    def sync_main() -> int:
        return 1

    async def agen():
        yield 1

    with pytest.raises(TypeError, match=r"got function 'sync_main', which is a plain def: define it as "
                                        r"'async def sync_main\(\)' and call carmulti.run\(sync_main\(\)\)"):
        carmulti.run(sync_main)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got None: pass the coroutine of an async def function, e.g. carmulti.run\(main\(\)\)"):
        carmulti.run(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got int 42: pass the coroutine"):
        carmulti.run(42)  # type: ignore[arg-type]
    gen = agen()
    with pytest.raises(TypeError, match=r"got async_generator: .*'async for'"):
        carmulti.run(gen)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got async generator function 'agen'.*'async for'"):
        carmulti.run(agen)  # type: ignore[arg-type]


def test_carmulti_run_accepts_any_awaitable():
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert carmulti.run(Awaitable()) == "awaited"


def test_carmulti_run_drives_a_pattern():
    from carmulti import AgentSpec, SharedInfra, Swarm

    from .doubles import MockRunner

    async def main():
        async with SharedInfra() as infra:
            return await Swarm([AgentSpec("a")]).run("sync", MockRunner(), infra)

    assert carmulti.run(main()).final_summary == "answer from a for: sync"


async def test_tools_used_is_made_on_first_use_and_stays_one_list(infra):
    rt = runtime_with(infra, Recorder())
    assert rt._used_tools() == [] and rt._tools_used is None  # reading the output copy creates nothing
    used = rt.tools_used
    assert used == [] and rt.tools_used is used  # the same list on every read
    await rt.execute(proposal(Action.tool_call("a1", "t", {})))
    assert used == ["t"]
    copy = rt._used_tools()
    assert copy == ["t"] and copy is not used
    rt.tools_used = ["x"]  # assignable, as the plain attribute it replaced
    assert rt.tools_used == ["x"] and rt._used_tools() == ["x"]
