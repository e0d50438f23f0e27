"""carmulti.testing: ScriptedRunner, EchoRunner, FunctionRunner (runner state observed: local only)."""

from __future__ import annotations

import functools
from unittest.mock import AsyncMock

import pytest

from carmulti import AgentOutput, AgentSpec, SharedInfra, Swarm, SwarmMode
from carmulti.testing import EchoRunner, FunctionRunner, ScriptedRunner, UnconsumedSteps, UnexpectedAgentCall


async def test_scripted_runner_by_name_replays_steps():
    runner = ScriptedRunner({"a": ["a1", "a2"], "b": [lambda spec, task: f"{spec.name}:{task}"]})
    async with SharedInfra() as infra:
        r1 = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("T", runner, infra)
        r2 = await Swarm([AgentSpec("a")]).run("U", runner, infra)
    assert [o.answer for o in r1.outputs] == ["a1", "b:T"]
    assert r2.outputs[0].answer == "a2"
    assert runner.calls == [("a", "T"), ("b", "T"), ("a", "U")]
    runner.assert_consumed()
    assert runner.remaining() == 0


async def test_scripted_runner_unexpected_call_raises():
    runner = ScriptedRunner({"a": ["only"]})
    await runner.run(AgentSpec("a"), "T", None, None)
    with pytest.raises(UnexpectedAgentCall, match="'a'"):
        await runner.run(AgentSpec("a"), "T", None, None)
    with pytest.raises(UnexpectedAgentCall, match="'stranger'"):
        await runner.run(AgentSpec("stranger"), "T", None, None)


async def test_unexpected_call_inside_a_pattern_fails_that_agent():
    runner = ScriptedRunner({"a": ["x"]})
    async with SharedInfra() as infra:
        result = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("T", runner, infra)
    assert result.outputs[0].answer == "x"
    assert "no scripted step left for agent 'b'" in result.outputs[1].error


def test_unconsumed_steps():
    runner = ScriptedRunner({"a": ["1", "2"], "b": ["3"]})
    assert runner.remaining() == 3
    with pytest.raises(UnconsumedSteps) as ei:
        runner.assert_consumed()
    assert "3 scripted step(s) never used" in str(ei.value)
    assert "a=2" in str(ei.value) and "b=1" in str(ei.value)


async def test_scripted_flat_steps_exceptions_and_outputs():
    out = AgentOutput("custom", "given", turns=5)
    runner = ScriptedRunner(["first", RuntimeError("scripted failure"), out])
    async with SharedInfra() as infra:
        result = await Swarm([AgentSpec("a"), AgentSpec("b"), AgentSpec("c")], SwarmMode.SEQUENTIAL).run(
            "T", runner, infra)
    assert result.outputs[0].answer == "first"
    assert result.outputs[1].error == "scripted failure"
    assert result.outputs[2] == out
    with pytest.raises(UnexpectedAgentCall):
        await runner.run(AgentSpec("d"), "T", None, None)


async def test_echo_runner():
    runner = EchoRunner("{name} says {task}", tokens=(3, 4, 0.01))
    async with SharedInfra() as infra:
        result = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("hi", runner, infra)
        snap = infra.budget.snapshot()
    assert [o.answer for o in result.outputs] == ["a says hi", "b says hi"]
    assert snap.total_tokens == 14
    assert sorted(runner.calls) == [("a", "hi"), ("b", "hi")]
    assert EchoRunner().template == "{name}: {task}"


async def test_function_runner():
    async def fn(spec, task, runtime, mailbox):
        return f"{spec.name}/{task}"

    async with SharedInfra() as infra:
        result = await Swarm([AgentSpec("a")]).run("T", FunctionRunner(fn), infra)
    assert result.outputs[0].answer == "a/T" and result.outputs[0].turns == 1
    with pytest.raises(TypeError):
        FunctionRunner("not callable")  # type: ignore[arg-type]


def test_testing_errors_are_assertion_errors():
    assert issubclass(UnexpectedAgentCall, AssertionError)
    assert issubclass(UnconsumedSteps, AssertionError)


def test_function_runner_rejects_a_sync_def_at_construction():
    def work(spec, task, runtime, mailbox):
        return "never"

    with pytest.raises(TypeError, match=r"'.*work' is a plain def.*async def.*asyncio\.to_thread"):
        FunctionRunner(work)
    with pytest.raises(TypeError, match="lambda"):
        FunctionRunner(lambda spec, task, runtime, mailbox: "never")
    with pytest.raises(TypeError, match="work"):
        FunctionRunner(functools.partial(work))

    class SyncCall:
        def __call__(self, spec, task, runtime, mailbox):
            return "never"

    with pytest.raises(TypeError, match="SyncCall"):
        FunctionRunner(SyncCall())

    async def agen(spec, task, runtime, mailbox):
        yield "never"

    with pytest.raises(TypeError, match="async generator"):
        FunctionRunner(agen)


async def test_function_runner_accepts_every_async_callable():
    async def answer(prefix, spec, task, runtime, mailbox):
        return f"{prefix}:{spec.name}/{task}"

    class AsyncCall:
        async def __call__(self, spec, task, runtime, mailbox):
            return f"obj:{spec.name}/{task}"

    class Holder:
        async def method(self, spec, task, runtime, mailbox):
            return f"method:{spec.name}/{task}"

    def decorated(fn):
        @functools.wraps(fn)
        def wrapper(*args):  # a plain def returning fn's coroutine
            return fn(*args)
        return wrapper

    @decorated
    async def wrapped(spec, task, runtime, mailbox):
        return f"wrapped:{spec.name}/{task}"

    fns = [functools.partial(answer, "partial"), AsyncCall(), Holder().method, wrapped,
           functools.partial(AsyncCall()), AsyncMock(return_value="mock")]
    async with SharedInfra() as infra:
        answers = [(await Swarm([AgentSpec("a")]).run("T", FunctionRunner(fn), infra)).outputs[0].answer for fn in fns]
    assert answers == ["partial:a/T", "obj:a/T", "method:a/T", "wrapped:a/T", "obj:a/T", "mock"]


async def test_function_runner_result_that_is_not_awaitable_fails_the_agent():
    async def ok(spec, task, runtime, mailbox):
        return "ok"

    runner = FunctionRunner(ok)
    runner.fn = lambda spec, task, runtime, mailbox: "sync answer"  # swapped after the construction check
    async with SharedInfra() as infra:
        out = (await Swarm([AgentSpec("a")]).run("T", runner, infra)).outputs[0]
    assert not out.succeeded and "returned str, not an awaitable" in out.error and "async def" in out.error
