"""ProcessExecutor: every pattern gives the same outputs, order, state keys and budget accounting as
the LocalExecutor (each test runs both in the same test and compares), plus isolation, events,
state fall-through, tools proxied to the coordinator and mailboxes brokered across processes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from carmulti import (
    Action,
    ActionProposal,
    AgentOutput,
    AgentPool,
    AgentSpec,
    BudgetLimits,
    Delegator,
    LocalExecutor,
    MailboxSend,
    MapReduce,
    Message,
    Pipeline,
    ProcessExecutor,
    SharedInfra,
    Supervisor,
    Swarm,
    SwarmMode,
    TokenAccounting,
    Vote,
)
from carmulti.executors import AgentJob


class ParityRunner:
    """Deterministic; exercises the runtime: writes ``note.{name}`` through a state_write action,
    reads ``seed`` (set by the test in the coordinator), reports tokens, and fails when the spec's
    metadata says so. Supervisors approve in round 2; delegating mains call ``delegate``."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        md = spec.metadata
        if md.get("fail"):
            await runtime.execute(ActionProposal("p", spec.name, [Action.state_write("w", f"note.{spec.name}", 1)]))
            raise RuntimeError(f"{spec.name} failed on purpose")
        seed = runtime.state.get("seed")
        await runtime.execute(ActionProposal("p", spec.name, [
            Action.state_write("w", f"note.{spec.name}", {"len": len(task), "seed": seed})]))
        if md.get("delegate"):
            calls = []
            for who in md["delegate"]:
                res = await runtime.execute(ActionProposal(f"d-{who}", spec.name, [
                    Action.tool_call("c", "delegate", {"specialist": who, "subtask": f"help with {task[:20]}"})]))
                calls.append(str(res.results[0].output))
            answer = " | ".join(calls)
        elif md.get("supervisor"):
            answer = "APPROVED" if "round 2" in task or "feedback" in task.lower() else "needs work"
        elif md.get("vote"):
            answer = md["vote"]
        else:
            answer = f"{spec.name}<{len(task)}>"
        return AgentOutput(name=spec.name, answer=answer, turns=1,
                           tokens=TokenAccounting(len(task) % 7 + 1, 2, 0.001))


def _norm(o: AgentOutput) -> dict[str, Any]:
    d = o.to_dict()
    d.pop("duration_ms")
    return d


def _budget(infra: SharedInfra) -> dict[str, Any]:
    return infra.budget.snapshot().to_dict()


async def _both(coordination, *, budget: BudgetLimits | None = None, seed: Any = "s0"):
    """Run ``coordination(infra)`` on a local and a process infra; return both results and infras' views."""
    out = []
    for executor in (LocalExecutor(), ProcessExecutor(workers=2)):
        async with SharedInfra(executor=executor, budget=budget) as infra:
            infra.state.set("seed", seed)
            result = await coordination(infra)
            snap = infra.state.snapshot()
            out.append((result, snap, _budget(infra), sorted({e.kind for e in infra.log})))
    return out


def _assert_same(local, process, outputs):
    (lres, lstate, lbudget, lkinds), (pres, pstate, pbudget, pkinds) = local, process
    assert [_norm(o) for o in outputs(pres)] == [_norm(o) for o in outputs(lres)]
    assert pstate == lstate
    assert pbudget == lbudget
    assert pkinds == lkinds


AGENTS = [AgentSpec("alpha"), AgentSpec("beta", metadata={"fail": True}), AgentSpec("gamma", "sys")]


@pytest.mark.parametrize("mode", ["parallel", "sequential", "debate"])
@pytest.mark.parametrize("isolated", [False, True], ids=["shared", "isolated"])
async def test_swarm_parity(mode, isolated):
    swarm = Swarm(AGENTS, SwarmMode(mode)).with_synthesizer(AgentSpec("synth"))
    if isolated:
        swarm = swarm.with_isolation()
    local, process = await _both(lambda infra: swarm.run("task", ParityRunner(), infra))
    _assert_same(local, process, lambda r: r.outputs)
    assert process[0].final_summary == local[0].final_summary
    assert process[1]["note.alpha"] == {"len": len("task"), "seed": "s0"}
    # a failed agent's isolated writes are discarded; shared writes stay (as local)
    assert ("note.beta" in process[1]) == (not isolated or mode != "parallel")  # debate rounds run unisolated


async def test_swarm_budget_gating_parity():
    agents = [AgentSpec(f"a{i}") for i in range(6)]
    local, process = await _both(lambda infra: Swarm(agents).run("t", ParityRunner(), infra),
                                 budget=BudgetLimits(max_agents=4))
    _assert_same(local, process, lambda r: r.outputs)
    assert [o.error is not None for o in process[0].outputs] == [False] * 4 + [True] * 2
    assert process[2]["agents_started"] == 4


async def test_pipeline_parity():
    stages = [AgentSpec("s1"), AgentSpec("s2"), AgentSpec("s3")]
    local, process = await _both(lambda infra: Pipeline(stages).run("start", ParityRunner(), infra))
    _assert_same(local, process, lambda r: r.stages)
    assert process[0].final_answer == local[0].final_answer


async def test_supervisor_parity():
    sup = Supervisor([AgentSpec("w1"), AgentSpec("w2")], AgentSpec("boss", metadata={"supervisor": True}), 3)
    local, process = await _both(lambda infra: sup.run("build", ParityRunner(), infra))
    lres, pres = local[0], process[0]
    assert (pres.approved, pres.final_answer, pres.supervisor_feedback) == \
        (lres.approved, lres.final_answer, lres.supervisor_feedback)
    assert [[_norm(o) for o in r] for r in pres.rounds] == [[_norm(o) for o in r] for r in lres.rounds]
    assert process[1:] == local[1:]


async def test_delegator_parity():
    main = AgentSpec("lead", metadata={"delegate": ["researcher", "nobody", "writer"]})
    specialists = {"researcher": AgentSpec("researcher"), "writer": AgentSpec("writer", metadata={"fail": True})}
    local, process = await _both(lambda infra: Delegator(main, specialists).run("T", ParityRunner(), infra))
    lres, pres = local[0], process[0]
    assert pres.final_answer == lres.final_answer
    assert [d.to_dict() for d in pres.delegations] == [d.to_dict() for d in lres.delegations]
    assert process[1:] == local[1:]


async def test_map_reduce_parity():
    mr = MapReduce(AgentSpec("m"), AgentSpec("r"), max_concurrent=3)
    items = [f"item {i}" for i in range(7)]
    local, process = await _both(lambda infra: mr.run("count", items, ParityRunner(), infra))
    _assert_same(local, process, lambda r: r.map_outputs)
    assert process[0].reduced_answer == local[0].reduced_answer


async def test_vote_parity():
    voters = [AgentSpec("v1", metadata={"vote": "Yes."}), AgentSpec("v2", metadata={"vote": "no"}),
              AgentSpec("v3", metadata={"vote": "yes"})]
    local, process = await _both(lambda infra: Vote(voters).run("?", ParityRunner(), infra))
    lres, pres = local[0], process[0]
    assert (pres.winner, pres.agreement_ratio) == (lres.winner, lres.agreement_ratio) == ("Yes.", 2 / 3)
    assert [_norm(o) for o in pres.votes] == [_norm(o) for o in lres.votes]
    assert process[1:] == local[1:]


# -- executor-level behaviour ---------------------------------------------------------------------------------


class StateRunner:
    """Reads keys from the coordinator's store, deletes one, writes one; answers what it read."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        st = runtime.state
        got = [st.get("a"), st.exists("b"), st.get("missing", "dflt"), sorted(st.keys())]
        st.delete("b", spec.name)
        st.set("c", {"from": spec.name}, spec.name)
        got.append([st.exists("b"), st.get("c")])
        return repr(got)


async def test_state_reads_fall_through_and_writes_come_back():
    async with SharedInfra(executor=ProcessExecutor(workers=1)) as infra:
        infra.state.set("a", [1, 2])
        infra.state.set("b", True)
        ex = infra.executor
        shared = await ex.run_agent(StateRunner(), AgentJob(AgentSpec("x"), "t"), infra)
        assert shared.output.answer == repr([[1, 2], True, "dflt", ["a", "b"], [False, {"from": "x"}]])
        assert infra.state.snapshot() == {"a": [1, 2], "c": {"from": "x"}}  # applied in order on arrival
        infra.state.set("b", True)
        iso = await ex.run_agent(StateRunner(), AgentJob(AgentSpec("y"), "t", isolated=True), infra)
        assert iso.ok and infra.state.snapshot() == {"a": [1, 2], "b": True, "c": {"from": "x"}}
        iso.merge()
        assert infra.state.snapshot() == {"a": [1, 2], "c": {"from": "y"}}
        iso2 = await ex.run_agent(StateRunner(), AgentJob(AgentSpec("z"), "t", isolated=True), infra)
        iso2.discard()
        assert infra.state.snapshot() == {"a": [1, 2], "c": {"from": "y"}}


class EventRunner:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        await runtime.execute(ActionProposal("p1", spec.name, [Action.state_read("r", "k")]))
        return "ok"


async def test_events_reach_the_coordinator_log_in_per_agent_order():
    async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra:
        await Swarm([AgentSpec(f"e{i}") for i in range(4)]).run("t", EventRunner(), infra)
        for i in range(4):
            kinds = [e.kind for e in infra.log.filter(agent=f"e{i}")]
            assert kinds == ["proposal_received", "action_executing", "action_succeeded", "proposal_completed"]


class BudgetPeekRunner:
    """Charges the shared budget from the worker and reports what it saw."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        runtime.budget.record(TokenAccounting(10, 0, 0.0))
        return f"{os.getpid()}:{runtime.budget.snapshot().input_tokens}"


async def test_workers_charge_the_shared_memory_budget():
    async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra:
        res = await Swarm([AgentSpec(f"b{i}") for i in range(8)]).run("t", BudgetPeekRunner(), infra)
        assert all(o.succeeded for o in res.outputs)
        assert int(infra.budget.snapshot().input_tokens) == 80
        assert {o.answer.split(":")[0] for o in res.outputs} <= {str(p) for p in infra.executor.pids}


class ChatRunner:
    """``alice`` sends to ``bob`` through the swarm's shared mailbox; bob waits for it."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        if spec.name == "bob":
            inbox = mailbox.register("bob")
            await asyncio.sleep(0)
            msg = await inbox.recv(timeout_s=10)
            return f"bob got {msg.content!r} from {msg.from_agent}"
        for _ in range(200):
            if "bob" in mailbox:
                break
            await asyncio.sleep(0.01)
        await mailbox.send(Message("alice", "bob", "hi"))
        try:
            await mailbox.send(Message("alice", "carol", "hi"))
        except MailboxSend as exc:
            return str(exc)
        return "sent"


async def test_mailbox_brokered_across_workers():
    async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra:
        res = await Swarm([AgentSpec("bob"), AgentSpec("alice")]).run("t", ChatRunner(), infra)
        assert [o.answer for o in res.outputs] == ["bob got 'hi' from alice", "mailbox send error: no agent 'carol'"]


class PoolEchoRunner:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        msg = await mailbox.inbox.recv(timeout_s=10)
        if task == "relay":
            await mailbox.send(2, f"relayed {msg.content}")
        return f"{mailbox.agent_id} got {msg.content} from {msg.from_id}"


async def test_agent_pool_messages_between_pooled_agents_on_workers():
    from carmulti import AgentMessage

    async with SharedInfra(executor=ProcessExecutor(workers=2)) as infra:
        pool = AgentPool(PoolEchoRunner(), 2, infra=infra)
        a = pool.spawn(AgentSpec("relay"), "relay")
        b = pool.spawn(AgentSpec("end"), "end")
        await pool.router().send(AgentMessage(0, a, "ping"))
        out = await pool.join_all()
        assert out[a].answer == "1 got ping from 0"
        assert out[b].answer == "2 got relayed ping from 1"


async def test_lazy_start_context_manager_and_restart_after_close():
    ex = ProcessExecutor(workers=1)
    assert not ex.running and ex.pids == []
    infra = SharedInfra(executor=ex)
    run = await ex.run_agent(ParityRunner(), AgentJob(AgentSpec("x"), "t"), infra)
    assert run.ok and ex.running and len(ex.pids) == 1
    await ex.aclose()
    assert not ex.running and ex.pids == []
    async with ex:
        assert len(ex.pids) == 1
    await infra.aclose()


def test_bad_arguments():
    with pytest.raises(ValueError, match="fork"):
        ProcessExecutor(start_method="fork")
    with pytest.raises(ValueError, match="workers"):
        ProcessExecutor(workers=0)
    with pytest.raises(ValueError, match="cancel_grace_s"):
        ProcessExecutor(cancel_grace_s=0)


async def test_forkserver_start_method():
    async with SharedInfra(executor=ProcessExecutor(workers=1, start_method="forkserver")) as infra:
        res = await Swarm([AgentSpec("f1"), AgentSpec("f2")]).run("t", ParityRunner(), infra)
        assert [o.answer for o in res.outputs] == ["f1<1>", "f2<1>"]


async def test_large_fan_out_keeps_order():
    async with SharedInfra(executor=ProcessExecutor(workers=2, batch_size=64, max_inflight_per_worker=300)) as infra:
        specs = [AgentSpec(f"n{i}") for i in range(3000)]
        res = await Swarm(specs).run("t", ParityRunner(), infra)
        assert [o.name for o in res.outputs] == [s.name for s in specs]
        assert all(o.succeeded for o in res.outputs)
        assert len(infra.state.keys()) == 2 * 3000  # note.{name} + agent.{name}.answer


async def test_a_worker_fed_more_frames_than_one_read_burst_runs_every_job_at_once():
    """Frames beyond READ_BURST are read on a later loop turn (never dropped, never left unread on the
    edge-triggered socket); all the jobs wait at once."""
    from carmulti.executors.process.worker import READ_BURST

    class StartClock:
        async def run(self, spec, task, runtime, mailbox):
            import time as _t

            started = _t.monotonic()
            await asyncio.sleep(0.2)
            return AgentOutput(spec.name, repr(started), turns=1)

    n = 8 * READ_BURST
    async with SharedInfra(executor=ProcessExecutor(workers=1, batch_size=1)) as infra:
        res = await Swarm([AgentSpec(f"a{i}") for i in range(n)]).run("t", StartClock(), infra)
    assert [o.name for o in res.outputs] == [f"a{i}" for i in range(n)] and all(o.succeeded for o in res.outputs)
    starts = [float(o.answer) for o in res.outputs]
    assert max(starts) - min(starts) < 0.2  # every agent was waiting at once


async def test_a_big_submission_sends_its_first_waves_before_the_rest_is_queued(monkeypatch):
    """The workers start on a big round's first agents while the coordinator queues the rest
    (``SUBMIT_WAVE``); every agent still runs once, in order."""
    from carmulti.executors.process import scheduling
    from carmulti.executors.process.transport import Transport

    monkeypatch.setattr(scheduling, "SUBMIT_WAVE", 100)
    ex = ProcessExecutor(workers=2, batch_size=32, max_inflight_per_worker=300)
    waves: list[tuple[int, int]] = []
    flush_now = Transport.flush_now

    def counting(self: Transport) -> None:
        flush_now(self)
        sent = sum(1 for p in ex._jobs.pending.values() if not p.unsent)
        waves.append((len(ex._jobs.pending), sent))

    monkeypatch.setattr(Transport, "flush_now", counting)
    async with SharedInfra(executor=ex) as infra:
        specs = [AgentSpec(f"n{i}") for i in range(1050)]
        res = await Swarm(specs).run("t", ParityRunner(), infra)
    assert [o.name for o in res.outputs] == [s.name for s in specs] and all(o.succeeded for o in res.outputs)
    assert [queued for queued, _ in waves] == [100 * k for k in range(1, 11)]  # one flush per full wave
    assert waves[0][1] == 100  # the first wave left before the second was queued
    assert all(sent > 0 for _, sent in waves)
