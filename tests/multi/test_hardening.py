"""Regression tests for defects found in review: budget races and sharing, rollback that must
not clobber other agents, cancellation through timeouts, invalid runner outputs, feeder
failures in MapReduce, and text with lone surrogates."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carmulti import (
    Action,
    ActionProposal,
    AgentOutput,
    AgentSpec,
    BudgetError,
    BudgetLimits,
    CoordinationBudget,
    LocalExecutor,
    MapReduce,
    SharedInfra,
    Swarm,
    SwarmMode,
    TokenAccounting,
    ToolError,
    truncate,
)
from carmulti.testing import EchoRunner


def test_first_use_of_a_budget_from_many_threads_never_exceeds_the_cap():
    for _trial in range(40):
        budget = CoordinationBudget(BudgetLimits(max_agents=37))
        barrier = threading.Barrier(8)
        admitted = [0] * 8

        def hammer(i: int) -> None:
            barrier.wait()
            for _ in range(60):
                try:
                    budget.begin_agent()
                    admitted[i] += 1
                except BudgetError:
                    pass

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert sum(admitted) == 37
            assert budget.snapshot().agents_started == 37
        finally:
            budget.close()


async def test_a_shared_budget_survives_the_infras_that_borrow_it():
    shared = CoordinationBudget(BudgetLimits(max_agents=10))
    a = SharedInfra().with_shared_budget(shared)
    b = SharedInfra().with_shared_budget(shared)
    try:
        await Swarm([AgentSpec("x")]).run("t", EchoRunner("{name} ok"), a)
        await a.aclose()
        res = await Swarm([AgentSpec("y")]).run("t", EchoRunner("{name} ok"), b)  # a closing did not unlink it
        assert res.outputs[0].succeeded
        b.with_budget(BudgetLimits())  # replacing a borrowed budget does not close it either
        shared.begin_agent()
        assert shared.snapshot().agents_started == 3
    finally:
        await b.aclose()
        shared.close()


def test_with_shared_budget_rejects_limits():
    with pytest.raises(TypeError, match="takes a CoordinationBudget"):
        SharedInfra().with_shared_budget(BudgetLimits())  # type: ignore[arg-type]


class _Gate:
    """``wait`` blocks until released, then fails (aborting its proposal)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def execute(self, tool, params):
        await self.release.wait()
        raise ToolError("late failure")


async def test_abort_does_not_undo_another_agents_later_write_to_the_same_key():
    infra = SharedInfra()
    gate = _Gate()
    a = infra.make_runtime(agent="A")
    a.register_tool("wait")
    a.set_executor(gate)
    b = infra.make_runtime(agent="B")
    ta = asyncio.ensure_future(a.execute(ActionProposal("pa", "A", [Action.state_write("w", "k", 1),
                                                                     Action.tool_call("t", "wait")])))
    await asyncio.sleep(0.01)
    rb = await b.execute(ActionProposal("pb", "B", [Action.state_write("w", "k", 2)]))
    gate.release.set()
    ra = await ta
    assert rb.all_succeeded and [r.status.value for r in ra.results] == ["succeeded", "failed"]
    assert infra.state.get("k") == 2  # B's committed write stands
    rollback = [e for e in infra.log.filter(kind="state_rollback") if e.agent == "A"]
    assert rollback[-1].data == {"keys": [], "kept": ["k"]}
    await infra.aclose()


async def test_abort_still_restores_its_own_writes():
    infra = SharedInfra()
    infra.state.set("k", "before")
    gate = _Gate()
    gate.release.set()
    rt = infra.make_runtime(agent="A")
    rt.register_tool("wait")
    rt.set_executor(gate)
    await rt.execute(ActionProposal("p", "A", [Action.state_write("w1", "k", 1), Action.state_write("w2", "new", 2),
                                               Action.tool_call("t", "wait")]))
    assert infra.state.get("k") == "before" and not infra.state.exists("new")
    await infra.aclose()


async def test_overlay_rollback_of_a_created_key_leaves_no_tombstone():
    infra = SharedInfra()
    gate = _Gate()
    gate.release.set()
    rt, ctx = infra.make_isolated_runtime("C")
    rt.register_tool("wait")
    rt.set_executor(gate)
    res = await rt.execute(ActionProposal("p", "C", [Action.state_write("w", "new", 1), Action.tool_call("t", "wait")]))
    assert not res.all_succeeded
    assert ctx.changes() == ({}, [])  # nothing left to merge: no delete of "new"
    infra.state.set("new", "from-B")  # another agent creates the key meanwhile
    ctx.merge_to_parent()
    assert infra.state.get("new") == "from-B"
    await infra.aclose()


async def test_overlay_rollback_restores_an_earlier_local_write():
    infra = SharedInfra()
    gate = _Gate()
    gate.release.set()
    rt, ctx = infra.make_isolated_runtime("C")
    rt.register_tool("wait")
    rt.set_executor(gate)
    await rt.execute(ActionProposal("p1", "C", [Action.state_write("w", "k", "first")]))
    await rt.execute(ActionProposal("p2", "C", [Action.state_write("w", "k", "second"), Action.tool_call("t", "wait")]))
    assert ctx.get("k") == "first" and ctx.changes() == ({"k": "first"}, [])
    await infra.aclose()


class CountingSleeper:
    """Sleeps ``sleep_s``; counts the runs started, finished and cancelled in ``seen``."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.seen = {"started": 0, "finished": 0, "cancelled": 0}

    async def run(self, spec, task, runtime, mailbox):
        self.seen["started"] += 1
        try:
            await asyncio.sleep(self.sleep_s)
        except asyncio.CancelledError:
            self.seen["cancelled"] += 1
            raise
        self.seen["finished"] += 1
        return "late"


async def test_cancelling_a_pattern_cancels_its_runners_even_with_an_agent_timeout():
    runner = CountingSleeper(0.5)
    async with SharedInfra(executor=LocalExecutor(), agent_timeout_s=5.0) as infra:
        task = asyncio.ensure_future(Swarm([AgentSpec("a"), AgentSpec("b")]).run("t", runner, infra))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)
    assert runner.seen == {"started": 2, "finished": 0, "cancelled": 2}


async def test_cancelling_a_parallel_round_cancels_every_runner():
    # no agent timeout: the batch's own tasks (LocalExecutor.run_batch) are what the cancellation reaches
    runner = CountingSleeper(5)
    async with SharedInfra(executor=LocalExecutor()) as infra:
        task = asyncio.ensure_future(Swarm([AgentSpec(f"a{i}") for i in range(50)]).run("t", runner, infra))
        while runner.seen["started"] < 50:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert runner.seen == {"started": 50, "finished": 0, "cancelled": 50}
    assert not infra.state.keys()


def test_a_loop_closed_under_a_batch_reports_no_agent_task_one_by_one():
    # as with asyncio.gather's own tasks: a loop closed with a big batch pending does not report
    # "Task was destroyed but it is pending!" once per agent
    reported: list[str] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(repr(ctx.get("task"))))

    class Forever:
        async def run(self, spec, task, runtime, mailbox):
            await asyncio.sleep(3600)
            return "never"

    async def start() -> asyncio.Task:
        infra = SharedInfra(executor=LocalExecutor())
        pattern = loop.create_task(Swarm([AgentSpec(f"a{i}") for i in range(20)]).run("t", Forever(), infra))
        pattern._log_destroy_pending = False  # this test's own task
        for _ in range(5):
            await asyncio.sleep(0)
        return pattern

    pattern = loop.run_until_complete(start())
    loop.close()
    del pattern
    gc.collect()
    assert not [r for r in reported if "_run_agent" in r]


class NegativeSpend:
    """Agent ``bad`` reports negative tokens; the others behave."""

    async def run(self, spec, task, runtime, mailbox):
        tokens = TokenAccounting(-5, 0, 0.0) if spec.name == "bad" else TokenAccounting(1, 1, 0.0)
        return AgentOutput(spec.name, f"{spec.name} done", turns=1, tokens=tokens)


@pytest.mark.parametrize("mode", [SwarmMode.PARALLEL, SwarmMode.SEQUENTIAL])
async def test_an_invalid_runner_output_fails_only_that_agent(make_infra, mode):
    infra = make_infra()
    res = await Swarm([AgentSpec("good"), AgentSpec("bad"), AgentSpec("also")], mode).run("t", NegativeSpend(), infra)
    assert [o.name for o in res.outputs] == ["good", "bad", "also"]
    assert res.outputs[0].succeeded and res.outputs[2].succeeded
    assert res.outputs[1].error == ("invalid output from runner: reported spend must be non-negative, "
                                    "got input_tokens=-5 output_tokens=0 cost_usd=0.0")
    assert not infra.state.exists("agent.bad.answer")
    assert infra.budget.snapshot().total_tokens == 4  # only the valid outputs were recorded


class _Boom(Exception):
    pass


class FailingExecutor(LocalExecutor):
    """Raises from ``run_agent`` on its third call (as a process executor that gave up would)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def run_agent(self, runner, job, infra):
        self.calls += 1
        if self.calls == 3:
            raise _Boom("executor gave up")
        await asyncio.sleep(0.01)
        return await super().run_agent(runner, job, infra)


async def test_a_feeder_failure_stops_the_other_feeders_and_leaves_no_task():
    ex = FailingExecutor()
    async with SharedInfra(executor=ex) as infra:
        with pytest.raises(_Boom):
            await MapReduce(AgentSpec("m"), AgentSpec("r"), 4).run("t", ["x"] * 100, EchoRunner("{name} ok"), infra)
        calls = ex.calls
        await asyncio.sleep(0.1)
        assert ex.calls == calls  # nothing started after the failure
    assert calls < 10
    # the suite's task-leak fixture checks that no feeder is left pending


@given(st.lists(st.sampled_from(["a", "é", "€", "𝄞", "\udcff", "\ud800"]), max_size=60), st.integers(0, 120))
def test_truncate_keeps_lone_surrogates_whole(chars, n):
    s = "".join(chars)
    out = truncate(s, n)
    assert s.startswith(out)
    assert len(out.encode("utf-8", "surrogatepass")) <= n
    rest = s[len(out):]
    if rest:  # maximal: the next character would not fit
        assert len((out + rest[0]).encode("utf-8", "surrogatepass")) > n


async def test_sequential_swarm_with_surrogate_answers_does_not_crash():
    answer = EchoRunner(os.fsdecode(b"file-\xff" * 200))  # the template has no fields: every agent answers it
    async with SharedInfra() as infra:
        res = await Swarm([AgentSpec("a"), AgentSpec("b")], SwarmMode.SEQUENTIAL).run("t", answer, infra)
    assert all(o.succeeded for o in res.outputs)


class CustomEvent:
    """Logs an event whose data JSON cannot carry (an int beyond 64 bits)."""

    async def run(self, spec, task, runtime, mailbox):
        runtime.log.append("custom", {"n": 2**70}, agent=spec.name)
        return "unreachable"


async def test_unserializable_event_data_fails_only_that_agent_on_both_executors(make_infra):
    infra = make_infra()
    res = await asyncio.wait_for(Swarm([AgentSpec("bad"), AgentSpec("ok")]).run("t", _Mixed(), infra), 60)
    assert res.outputs[0].error == "event data for kind 'custom' is not JSON-serializable: Integer exceeds 64-bit range"
    assert res.outputs[1].succeeded


class _Mixed:
    async def run(self, spec, task, runtime, mailbox):
        if spec.name == "bad":
            return await CustomEvent().run(spec, task, runtime, mailbox)
        return "fine"


class InnerCancel:
    """Raises CancelledError itself: awaits a task it cancelled (nobody cancelled the agent)."""

    async def run(self, spec, task, runtime, mailbox):
        t = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        t.cancel()
        await t
        return "unreachable"


async def test_a_runner_raising_cancelled_error_is_a_failed_agent_not_a_hang(make_infra):
    infra = make_infra()
    res = await asyncio.wait_for(Swarm([AgentSpec("c"), AgentSpec("ok")]).run("t", _CancelMixed(), infra), 60)
    assert res.outputs[0].error == "join error: CancelledError raised by the runner"
    assert res.outputs[1].succeeded


class _CancelMixed:
    async def run(self, spec, task, runtime, mailbox):
        if spec.name == "c":
            return await InnerCancel().run(spec, task, runtime, mailbox)
        return "fine"


class WritesOddValues:
    async def run(self, spec, task, runtime, mailbox):
        import datetime

        vals = {"nan": float("nan"), "big": 2**70, "when": datetime.datetime(2024, 1, 1)}
        res = await runtime.execute(ActionProposal("p", spec.name, [
            Action.state_write(k, k, v, failure_behavior="skip") for k, v in vals.items()]))
        return " | ".join(r.error or "ok" for r in res.results)


async def test_state_values_are_validated_alike_on_both_executors(make_infra):
    infra = make_infra()
    res = await Swarm([AgentSpec("w")]).run("t", WritesOddValues(), infra)
    errors = res.outputs[0].answer.split(" | ")
    assert errors[0] == "TypeError: state value for key 'nan' is not JSON-serializable: non-finite float nan has no JSON representation"
    assert errors[1] == "TypeError: state value for key 'big' is not JSON-serializable: integer 1180591620717411303424 exceeds the 64-bit range"
    assert errors[2].startswith("TypeError: state value for key 'when' is not JSON-serializable: ")
    assert not any(infra.state.exists(k) for k in ("nan", "big", "when"))


SCRIPT = '''
import asyncio
import carmulti
from carmulti import AgentSpec, ProcessExecutor, SharedInfra, Swarm

GREETING = "hello from a script"

class ScriptRunner:  # defined in __main__, uses module globals (asyncio, GREETING)
    async def run(self, spec, task, runtime, mailbox):
        await asyncio.sleep(0)
        return f"{GREETING}: {spec.name}"

async def main():
    async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra:
        res = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("t", ScriptRunner(), infra)
    print([(o.answer, o.error) for o in res.outputs])

if __name__ == "__main__":
    carmulti.run(main())
'''


def test_a_runner_defined_in_a_scripts_main_works_on_the_process_executor(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[('hello from a script: a', None), ('hello from a script: b', None)]"


class ImpatientReceiver:
    """Receives with a very short ``asyncio.wait_for`` around ``recv`` until END; answers what it got."""

    async def run(self, spec, task, runtime, mailbox):
        inbox = mailbox.register("r")
        got = []
        while True:
            try:
                m = await asyncio.wait_for(inbox.recv(), 0.002)
            except asyncio.TimeoutError:
                continue
            if m.content == "END":
                return ",".join(got)
            got.append(m.content)


async def test_cancelling_a_recv_never_loses_a_message(make_infra):
    """On the process executor the coordinator may already have handed a message to a recv
    that the agent then cancels: the worker keeps it for the next recv."""
    from carmulti import Mailbox, Message
    from carmulti.executors import AgentJob

    infra = make_infra()
    mb = Mailbox(buffer_size=16)
    task = asyncio.ensure_future(infra.executor.run_agent(ImpatientReceiver(), AgentJob(AgentSpec("a"), "t", mailbox=mb),
                                                          infra))
    while "r" not in mb:
        await asyncio.sleep(0.005)
    n = 200
    for i in range(n):
        await mb.send(Message("c", "r", str(i)))
        if i % 7 == 0:
            await asyncio.sleep(0.001)
    await mb.send(Message("c", "r", "END"))
    run = await asyncio.wait_for(task, 60)
    assert run.error is None
    assert run.output.answer.split(",") == [str(i) for i in range(n)]  # every message, once, in order


async def test_unregistering_a_full_inbox_fails_its_blocked_senders_instead_of_stranding_them():
    from carmulti import Mailbox, MailboxSend, Message

    mb = Mailbox(buffer_size=1)
    inbox = mb.register("x")
    await mb.send(Message("a", "x", "first"))
    blocked = asyncio.ensure_future(mb.send(Message("a", "x", "second")))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    mb.unregister("x")
    with pytest.raises(MailboxSend, match="was closed while the message waited for room; it was not delivered"):
        await asyncio.wait_for(blocked, 5)
    assert (await inbox.recv(timeout_s=1)).content == "first"  # accepted messages stay readable
    assert inbox.qsize() == 0


async def test_a_full_inbox_still_times_out_with_mailbox_full_and_keeps_order():
    from carmulti import Mailbox, MailboxFull, Message

    mb = Mailbox(buffer_size=2)
    inbox = mb.register("x")
    for i in range(2):
        await mb.send(Message("a", "x", i))
    with pytest.raises(MailboxFull):
        await mb.send(Message("a", "x", 2), timeout_s=0.05)
    waiting = asyncio.ensure_future(mb.send(Message("a", "x", 3)))
    await asyncio.sleep(0.01)
    assert (await inbox.recv()).content == 0
    await asyncio.wait_for(waiting, 5)
    assert [(await inbox.recv()).content for _ in range(2)] == [1, 3]
