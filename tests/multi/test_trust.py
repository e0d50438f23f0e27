"""Trust (issue 8): no failure reported as success, no hang on realistic inputs, a long-lived
executor that lives. Each test here failed on the code before the fix it guards; the finding it
guards is named in its docstring (F1..F12)."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from carmulti import (
    AgentOutput,
    AgentSpec,
    LocalExecutor,
    MapReduce,
    ProcessExecutor,
    SharedInfra,
    Swarm,
    TokenAccounting,
)
from carmulti.executors import AgentJob

#: Bound on every run below that used to hang: far above a healthy run, far below "forever".
HANG_BOUND_S = 60


def _b64(obj: Any) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode()


class PickledOutputRunner:
    """Returns (or raises) the object pickled in ``metadata["ret"]``/``["raise"]``; others answer normally."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        md = spec.metadata
        if "raise" in md:
            raise pickle.loads(base64.b64decode(md["raise"]))
        if "ret" in md:
            return pickle.loads(base64.b64decode(md["ret"]))
        return AgentOutput(spec.name, f"{spec.name} ok", turns=1, tokens=TokenAccounting(1, 1, 0.0))


# -- F1: every AgentOutput field survives the trip, error included ------------------------------------------------


async def test_a_runner_reported_failure_stays_a_failure_with_every_field(make_infra):
    """F1: ``AgentOutput(error=...)`` from a runner came back from a worker with ``error=None``."""
    infra = make_infra()
    reported = AgentOutput("llm", "partial", turns=3, tool_calls=2, duration_ms=5.5, error="API error 500: overloaded",
                           outcome={"finish": "error", "n": [1, 2]}, tokens=TokenAccounting(10, 5, 0.25),
                           tools_used=["search"])
    agents = [AgentSpec("llm", metadata={"ret": _b64(reported)}), AgentSpec("ok")]
    res = await asyncio.wait_for(Swarm(agents).run("t", PickledOutputRunner(), infra), HANG_BOUND_S)
    assert res.outputs[0] == reported
    assert not res.outputs[0].succeeded
    assert res.outputs[1].succeeded
    assert not infra.state.exists("agent.llm.answer")  # a failure writes no answer
    assert infra.state.get("agent.ok.answer") == "ok ok"
    snap = infra.budget.snapshot()
    assert (snap.input_tokens, snap.output_tokens, snap.cost_usd) == (11, 6, 0.25)  # its spend still counts


names = st.text(min_size=1, max_size=12)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
json_values = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                             st.dictionaries(st.text(max_size=5), kids, max_size=3)),
                           max_leaves=8)
counts = st.integers(0, 2**63 - 1)
good_outputs = st.builds(
    AgentOutput,
    name=names,
    answer=st.text(max_size=40),
    turns=counts,
    tool_calls=counts,
    duration_ms=st.floats(0, 1e12, allow_nan=False),
    error=st.none() | st.text(max_size=20),
    outcome=json_values,
    tokens=st.none() | st.builds(TokenAccounting, counts, counts, st.floats(0, 1e9, allow_nan=False)),
    tools_used=st.lists(st.text(max_size=8), max_size=3),
)
bad_values = st.sampled_from([None, "3", 3.5, -1, 2**70, float("nan"), float("inf"), (1,), [1], {"a": 1}, {1, 2},
                              True, b"x"])
fields = ["name", "answer", "turns", "tool_calls", "duration_ms", "error", "outcome", "tokens", "tools_used"]


@st.composite
def any_outputs(draw: Any) -> Any:
    out = draw(good_outputs)
    if draw(st.booleans()):
        setattr(out, draw(st.sampled_from(fields)), draw(bad_values))
    return out


def test_any_runner_output_gives_equal_results_on_local_and_process():
    """F1/F2 (property): whatever a runner returns, local and process report the same outputs."""
    loop = uvloop.new_event_loop()
    local = SharedInfra()
    remote = SharedInfra(executor=ProcessExecutor(workers=1))
    loop.run_until_complete(remote.start())

    async def both(out: Any) -> tuple[list[AgentOutput], list[AgentOutput]]:
        agents = [AgentSpec("x", metadata={"ret": _b64(out)}), AgentSpec("sibling")]
        a = await Swarm(agents).run("t", PickledOutputRunner(), local)
        b = await asyncio.wait_for(Swarm(agents).run("t", PickledOutputRunner(), remote), HANG_BOUND_S)
        return a.outputs, b.outputs

    @settings(max_examples=120, deadline=None)
    @given(any_outputs())
    def check(out: Any) -> None:
        a, b = loop.run_until_complete(both(out))
        for o in a + b:  # duration is measured when the runner's own is refused
            if o.error is not None and o.error.startswith("invalid output"):
                o.duration_ms = 0.0
        assert a == b
        assert a[1].succeeded and b[1].succeeded  # a sibling never pays for a bad output

    try:
        check()
    finally:
        loop.run_until_complete(remote.aclose())
        loop.run_until_complete(local.aclose())
        loop.close()


# -- F2: a bad output is that agent's error, never a hang, never its siblings' problem --------------------------------


def _out(**kw: Any) -> AgentOutput:
    o = AgentOutput("bad", "fine", turns=1, tokens=TokenAccounting(1, 1, 0.0))
    for k, v in kw.items():
        setattr(o, k, v)
    return o


BAD_OUTPUTS = [
    ("answer", _out(answer=123), "invalid output from runner: answer: expected a str, got int"),
    ("name", _out(name=None), "invalid output from runner: name: expected a non-empty str, got NoneType"),
    ("turns", _out(turns="3"), "invalid output from runner: turns: expected an int >= 0, got str"),
    ("duration", _out(duration_ms=None), "invalid output from runner: duration_ms: expected a finite number >= 0, "
                                         "got NoneType"),
    ("tools_used", _out(tools_used=None), "invalid output from runner: tools_used: expected a list of str, "
                                          "got NoneType"),
    ("tokens_tuple", _out(tokens=(1, 2, 0.0)), "invalid output from runner: tokens: expected a TokenAccounting or "
                                               "None, got tuple"),
    ("nan_cost", _out(tokens=TokenAccounting(1, 1, float("nan"))),
     "invalid output from runner: tokens.cost_usd: expected a finite number >= 0, got nan"),
    ("huge_tokens", _out(tokens=TokenAccounting(2**70, 1, 0.0)),
     "invalid output from runner: tokens.input_tokens: 1180591620717411303424 is outside the 64-bit range"),
]


@pytest.mark.parametrize("case,output,error", BAD_OUTPUTS, ids=[c[0] for c in BAD_OUTPUTS])
async def test_a_wrongly_typed_output_fails_only_that_agent(make_infra, case, output, error):
    """F2: each of these hung every agent of the swarm on the process executor (or passed silently
    / raised OverflowError locally)."""
    infra = make_infra()
    agents = [AgentSpec("s1"), AgentSpec("bad", metadata={"ret": _b64(output)}), AgentSpec("s2")]
    res = await asyncio.wait_for(Swarm(agents).run("t", PickledOutputRunner(), infra), HANG_BOUND_S)
    assert [o.name for o in res.outputs] == ["s1", "bad", "s2"]
    assert res.outputs[1].error == error
    assert res.outputs[0].succeeded and res.outputs[2].succeeded
    assert not infra.state.exists("agent.bad.answer")
    assert infra.budget.snapshot().total_tokens == 4


@pytest.mark.parametrize("ret,type_name", [(42, "int"), (None, "NoneType"), ({"answer": "x"}, "dict")])
async def test_a_runner_returning_neither_an_output_nor_a_str_fails_only_that_agent(make_infra, ret, type_name):
    infra = make_infra()
    agents = [AgentSpec("s1"), AgentSpec("bad", metadata={"ret": _b64(ret)}), AgentSpec("s2")]
    res = await asyncio.wait_for(Swarm(agents).run("t", PickledOutputRunner(), infra), HANG_BOUND_S)
    assert res.outputs[1].error == (f"runner returned {type_name} for agent 'bad'; "
                                    "AgentRunner.run must return an AgentOutput or a str")
    assert res.outputs[0].succeeded and res.outputs[2].succeeded
    assert not infra.state.exists("agent.bad.answer")


async def test_token_totals_saturate_instead_of_raising(make_infra):
    """F2: totals past 64 bits raised OverflowError out of Swarm.run."""
    infra = make_infra()
    big = _b64(AgentOutput("x", "ok", tokens=TokenAccounting(2**62, 0, 0.0)))
    agents = [AgentSpec(f"a{i}", metadata={"ret": big}) for i in range(3)]
    res = await asyncio.wait_for(Swarm(agents).run("t", PickledOutputRunner(), infra), HANG_BOUND_S)
    assert all(o.succeeded for o in res.outputs)
    assert infra.budget.snapshot().input_tokens == 2**63 - 1


async def test_a_runner_raising_generator_exit_is_a_failed_agent(make_infra):
    """F2: ``GeneratorExit`` from a runner killed the worker's task (a hang) or escaped locally."""
    infra = make_infra()
    agents = [AgentSpec("s1"), AgentSpec("bad", metadata={"raise": _b64(GeneratorExit("closed"))}), AgentSpec("s2")]
    res = await asyncio.wait_for(Swarm(agents).run("t", PickledOutputRunner(), infra), HANG_BOUND_S)
    assert res.outputs[1].error == "join error: GeneratorExit: closed"
    assert res.outputs[0].succeeded and res.outputs[2].succeeded


class SlowRunner:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        await asyncio.sleep(float(spec.metadata.get("sleep", 5)))
        return f"{spec.name} done"


async def test_a_rejected_result_frame_fails_exactly_the_jobs_it_carried():
    """F2: a result frame that failed validation was dropped whole, leaving its jobs hanging."""
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        jobs = [AgentJob(AgentSpec(f"a{i}", metadata={"sleep": 2 if i else 30}), "t") for i in range(3)]
        batch = asyncio.ensure_future(ex.run_batch(SlowRunner(), jobs, infra))
        for _ in range(500):
            if len(ex._jobs.pending) == 3 and all(not p.unsent for p in ex._jobs.pending.values()):
                break
            await asyncio.sleep(0.01)
        victim = min(ex._jobs.pending)  # a0: the 30 s sleeper
        w = ex._workers.slots[0]
        bad = {"t": "batch", "results": [{"id": victim, "output": ["a0", 5], "error": None, "duration_ms": 1.0}]}
        import orjson

        from carmulti.executors.process import wire as W

        ex._on_frames(w, [W.VERSION, orjson.dumps(bad)])
        runs = await asyncio.wait_for(batch, HANG_BOUND_S)
    assert runs[0].error is not None and runs[0].error.startswith(
        f"the coordinator rejected a result frame from worker {w.pid}: $.results[0].output")
    assert runs[1].ok and runs[2].ok
    assert ex.rejected_frames == 1


# -- F3: big inputs ---------------------------------------------------------------------------------------------------

MiB = 1024 * 1024


class BigRunner:
    """``metadata["answer_mib"]``: answer that many MiB; ``["read"]``: read that state key; else echo the size."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        md = spec.metadata
        if "answer_mib" in md:
            return "a" * int(md["answer_mib"] * MiB)
        if "read" in md:
            return f"read {len(runtime.state.get(md['read']))} chars"
        return f"{spec.name}: {len(task)}"


async def test_a_task_over_the_frame_limit_is_a_clear_error_not_a_hang():
    """F3: a 70 MiB task hung the run forever."""
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        agents = [AgentSpec("small")]
        big = "t" * (70 * MiB)
        res = await asyncio.wait_for(Swarm([AgentSpec("big")]).run(big, BigRunner(), infra), HANG_BOUND_S)
        err = res.outputs[0].error
        assert err is not None and "exceeds max_frame_bytes=67108864" in err and "big" in err
        assert str(70 * MiB) in err
        ok = await asyncio.wait_for(Swarm(agents).run("t", BigRunner(), infra), HANG_BOUND_S)
        assert ok.outputs[0].succeeded


async def test_an_answer_over_the_frame_limit_is_a_clear_error_and_siblings_finish():
    """F3: a 70 MiB answer hung the run forever."""
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        agents = [AgentSpec("huge", metadata={"answer_mib": 70}), AgentSpec("s1"), AgentSpec("s2")]
        res = await asyncio.wait_for(Swarm(agents).run("t", BigRunner(), infra), HANG_BOUND_S)
    err = res.outputs[0].error
    assert err is not None and "exceeds max_frame_bytes=67108864" in err
    assert res.outputs[1].succeeded and res.outputs[2].succeeded


async def test_many_big_answers_in_one_batch_are_split_by_bytes():
    """F3: 20 answers of 4 MiB (80 MiB in one batch) exceeded the frame limit and hung."""
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        agents = [AgentSpec(f"b{i}", metadata={"answer_mib": 4}) for i in range(20)]
        res = await asyncio.wait_for(Swarm(agents).run("t", BigRunner(), infra), HANG_BOUND_S)
    assert all(o.succeeded and len(o.answer) == 4 * MiB for o in res.outputs)


@pytest.mark.slow
async def test_a_wide_mapreduce_of_big_documents_completes():
    """F3: 600 documents of 150 KiB at max_concurrent=600 (88 MiB of jobs at once) hung."""
    ex = ProcessExecutor(workers=2)
    async with SharedInfra(executor=ex) as infra:
        docs = [chr(97 + i % 26) * (150 * 1024) for i in range(600)]
        mr = MapReduce(AgentSpec("m"), AgentSpec("r"), max_concurrent=600)
        res = await asyncio.wait_for(mr.run("Summarize", docs, BigRunner(), infra), HANG_BOUND_S * 2)
    assert len(res.map_outputs) == 600 and res.all_succeeded


async def test_reading_a_state_value_over_the_frame_limit_fails_fast_and_names_it():
    """F3: the worker rejected the oversize reply, blocked its loop for rpc_timeout_s, then blamed
    the coordinator."""
    ex = ProcessExecutor(workers=1, rpc_timeout_s=30)
    async with SharedInfra(executor=ex) as infra:
        infra.state.set("big", "v" * (70 * MiB))
        t0 = time.monotonic()
        res = await asyncio.wait_for(Swarm([AgentSpec("r", metadata={"read": "big"})]).run("t", BigRunner(), infra),
                                     HANG_BOUND_S)
        elapsed = time.monotonic() - t0
    err = res.outputs[0].error
    assert err is not None and "'big'" in err and "exceeds max_frame_bytes=67108864" in err
    assert "did not answer" not in err
    assert elapsed < 20  # failed at once, not after rpc_timeout_s=30


class DropFirstResult(ProcessExecutor):
    """Loses the first result frame it receives (as a frame lost in transit would be)."""

    dropped = 0

    def _on_batch(self, w: Any, body: dict[str, Any]) -> None:
        if (body.get("results") or body.get("done")) and not self.dropped:  # either form of result
            self.dropped += 1
            return
        super()._on_batch(w, body)


async def test_a_lost_result_fails_at_its_deadline_instead_of_re_arming_forever():
    """F3: the watchdog pinged the live worker and re-armed forever although the result was gone."""
    ex = DropFirstResult(workers=1, cancel_grace_s=0.2)
    async with SharedInfra(executor=ex, agent_timeout_s=0.5) as infra:
        t0 = time.monotonic()
        run = await asyncio.wait_for(ex.run_agent(SlowRunner(), AgentJob(AgentSpec("lost", metadata={"sleep": 0}), "t"),
                                                  infra), HANG_BOUND_S)
        assert time.monotonic() - t0 < 20
        assert run.error == f"the result of this agent was lost on its way from worker {ex.pids[0]}"
        ok = await ex.run_agent(SlowRunner(), AgentJob(AgentSpec("after", metadata={"sleep": 0}), "t"), infra)
        assert ok.ok


# -- F4: a long-lived executor ---------------------------------------------------------------------------------------


class FreshRunner:
    def __init__(self, n: int) -> None:
        self.n = n

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        runtime.budget.exhausted  # touch the shipped budget
        return f"{self.n}"


def _shm_maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if "/dev/shm/carmulti-" in line)


async def test_a_long_lived_executor_evicts_what_finished_coordinations_no_longer_need():
    """F4: every run with a fresh SharedInfra and runner left a cached runner and infra in the
    coordinator and one shared-memory mapping per worker, never evicted (mmap failed at ~65k)."""
    ex = ProcessExecutor(workers=2)
    await ex.start()
    try:
        for n in range(1500):
            infra = SharedInfra(executor=ex)
            res = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("t", FreshRunner(n), infra)
            assert res.outputs[0].answer == f"{n}"
            infra.budget.close()
            del infra
        maps = [_shm_maps(pid) for pid in ex.pids]
        assert max(maps) <= 20, maps
        assert ex.cached_counts()["runners"] <= 20 and ex.cached_counts()["infras"] <= 20
    finally:
        await ex.aclose()


# -- F5: a stopped worker ---------------------------------------------------------------------------------------------


async def test_a_stopped_worker_is_killed_and_its_agents_fail_without_any_agent_timeout(tmp_path):
    """F5: a SIGSTOPped worker hung the run forever when no agent_timeout_s was set."""
    ex = ProcessExecutor(workers=2, heartbeat_timeout_s=1.0)
    async with SharedInfra(executor=ex) as infra:
        victim = ex.pids[0]
        agents = [AgentSpec(f"a{i}", metadata={"sleep": 1.5}) for i in range(4)]
        agents.append(AgentSpec("again", metadata={"sleep": 1.5, "idempotent": True}))
        task = asyncio.ensure_future(Swarm(agents).run("t", SlowRunner(), infra))
        await asyncio.sleep(0.3)
        os.kill(victim, signal.SIGSTOP)
        try:
            res = await asyncio.wait_for(task, HANG_BOUND_S)
        finally:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert victim not in ex.pids and ex.restarts == 1
    errors = [o.error for o in res.outputs if not o.succeeded]
    assert errors, "the stopped worker held some agents"
    for e in errors:
        assert e.startswith(f"worker {victim} was killed (SIGKILL) because it sent no heartbeat for "), e
        assert "heartbeat_timeout_s=1.0" in e
    assert res.outputs[-1].succeeded  # the idempotent agent ran again on the other worker


# -- F6: interpreter exit with an unclosed executor --------------------------------------------------------------------

UNCLOSED = '''
import carmulti
from carmulti import AgentSpec, ProcessExecutor, SharedInfra, Swarm

class R:
    async def run(self, spec, task, runtime, mailbox):
        return "ok"

async def main():
    infra = SharedInfra(executor=ProcessExecutor(workers=2))
    res = await Swarm([AgentSpec("a")]).run("t", R(), infra)
    print(res.outputs[0].answer, flush=True)

if __name__ == "__main__":
    carmulti.run(main())
'''


def test_interpreter_exit_with_an_unclosed_executor_finishes_and_warns(tmp_path):
    """F6: a script that never closed its ProcessExecutor hung forever at interpreter exit."""
    script = tmp_path / "unclosed.py"
    script.write_text(UNCLOSED)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=HANG_BOUND_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    assert "ProcessExecutor(workers=2) was never closed" in proc.stderr


# -- F9: small batches use every worker --------------------------------------------------------------------------------


class PidRunner:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        await asyncio.sleep(0.01)
        return str(os.getpid())


@pytest.mark.parametrize("n", [2, 8, 600])
async def test_a_small_batch_is_spread_over_every_worker(n):
    """F9: an 8-agent swarm ran entirely in one worker; 600 split 512/88."""
    ex = ProcessExecutor(workers=2)
    async with SharedInfra(executor=ex) as infra:
        res = await Swarm([AgentSpec(f"a{i}") for i in range(n)]).run("t", PidRunner(), infra)
        pids = ex.pids
    per = {p: sum(o.answer == str(p) for o in res.outputs) for p in pids}
    assert sum(per.values()) == n
    assert min(per.values()) >= n // 2 - 1, per  # as even as the count allows


# -- F11: forged hellos, log floods, frame size limits ------------------------------------------------------------------


async def test_a_forged_hello_never_redirects_a_kill_to_another_process():
    """F11: a process that took a worker's identity and sent a hello with another pid got that pid
    SIGKILLed at aclose."""
    import zmq

    from carmulti.executors.process import wire as W

    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ex = ProcessExecutor(workers=1)
        async with SharedInfra(executor=ex) as infra:
            ctx = zmq.Context()
            try:
                rogue = ctx.socket(zmq.DEALER)
                rogue.setsockopt(zmq.LINGER, 0)
                rogue.setsockopt(zmq.IDENTITY, b"w0.1")  # the identity of worker 0's next generation
                rogue.connect(ex.endpoint)
                await asyncio.sleep(0.2)
                real = ex.pids[0]
                os.kill(real, signal.SIGKILL)
                for _ in range(500):  # the replacement is spawned with identity w0.1
                    if ex.restarts == 1:
                        break
                    await asyncio.sleep(0.01)
                rogue.send_multipart([W.VERSION, f'{{"t": "hello", "pid": {victim.pid}, "index": 0, "gen": 1}}'
                                     .encode()])
                for _ in range(500):
                    if ex.rejected_frames:
                        break
                    await asyncio.sleep(0.01)
                assert ex.rejected_frames >= 1
                rogue.close(linger=0)
            finally:
                ctx.term()
            assert victim.pid not in ex.pids
        assert victim.poll() is None, "the forged pid was killed"
    finally:
        victim.kill()
        victim.wait()


async def test_a_flood_of_bad_frames_is_counted_but_logged_rate_limited(caplog):
    """F11: every bad frame logged a line."""
    import zmq

    from carmulti.executors.process import wire as W

    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex):
        ctx = zmq.Context()
        try:
            rogue = ctx.socket(zmq.DEALER)
            rogue.setsockopt(zmq.LINGER, 0)
            rogue.connect(ex.endpoint)
            with caplog.at_level("WARNING", logger="carmulti"):
                for _ in range(500):
                    rogue.send_multipart([W.VERSION, b"{bad"])
                for _ in range(500):
                    if ex.rejected_frames >= 500:
                        break
                    await asyncio.sleep(0.01)
            rogue.close(linger=0)
        finally:
            ctx.term()
        assert ex.rejected_frames == 500
        lines = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert 1 <= len(lines) <= 5, len(lines)


async def test_sockets_refuse_messages_over_the_frame_limit():
    """F11: no ZMQ_MAXMSGSIZE was set, so a peer could make the coordinator buffer any size."""
    import zmq

    ex = ProcessExecutor(workers=1, max_frame_bytes=1 << 20)
    async with SharedInfra(executor=ex):
        assert 1 << 20 < ex._transport.sock.getsockopt(zmq.MAXMSGSIZE) <= (1 << 20) + (1 << 16)


# -- F12: the contract text for a timed-out agent whose worker is killed ------------------------------------------------


class Blocker:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        if spec.metadata.get("block"):
            time.sleep(float(spec.metadata["block"]))
        return "done"


async def test_every_agent_past_its_timeout_on_a_killed_worker_reports_the_timeout():
    """F12: when a stalled worker was killed at a timeout, its other timed-out agents said
    ``worker N was killed (SIGKILL) because ...`` instead of ``timeout after {n}s``."""
    ex = ProcessExecutor(workers=1, cancel_grace_s=0.2)
    async with SharedInfra(executor=ex, agent_timeout_s=0.3) as infra:
        res = await asyncio.wait_for(
            Swarm([AgentSpec("b1", metadata={"block": 60}), AgentSpec("b2", metadata={"block": 60})]).run(
                "t", Blocker(), infra), HANG_BOUND_S)
    assert [o.error for o in res.outputs] == ["timeout after 0.3s", "timeout after 0.3s"]


async def test_an_agent_lost_with_a_killed_worker_before_its_timeout_says_plainly_why():
    """F12: the agents that had not timed out are told what happened to them."""
    ex = ProcessExecutor(workers=1, cancel_grace_s=0.2)
    async with SharedInfra(executor=ex, agent_timeout_s=2.0) as infra:
        pid = ex.pids[0]
        first = asyncio.ensure_future(ex.run_agent(Blocker(), AgentJob(AgentSpec("stuck", metadata={"block": 60}), "t"),
                                                   infra))
        await asyncio.sleep(1.5)
        second = asyncio.ensure_future(ex.run_agent(Blocker(), AgentJob(AgentSpec("late"), "t"), infra))
        r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), HANG_BOUND_S)
    assert r1.error == "timeout after 2.0s"
    assert r2.error == (f"worker {pid} was killed (SIGKILL) because agent 'stuck' blocked its event loop past its "
                        "2.0s timeout and 0.2s grace; this agent was on that worker and was lost with it")


# -- a new user's friction ------------------------------------------------------------------------------------------


async def plain_function(spec, task, runtime, mailbox):
    return "never"


@pytest.mark.parametrize("runner,what", [(plain_function, "function 'plain_function'"),
                                         (PidRunner, "the class 'PidRunner' (pass an instance: PidRunner())"),
                                         (object(), "a object without a run method")])
async def test_a_runner_without_run_fails_before_any_agent_starts(runner, what):
    from carmulti import AgentPool, BudgetLimits, Delegator, Pipeline, Supervisor, Vote

    async with SharedInfra(budget=BudgetLimits(max_agents=100)) as infra:
        a = AgentSpec("a")
        calls = [
            lambda: Swarm([a]).run("t", runner, infra),
            lambda: Pipeline([a]).run("t", runner, infra),
            lambda: Supervisor([a], a).run("t", runner, infra),
            lambda: Delegator(a, {}).run("t", runner, infra),
            lambda: Vote([a]).run("t", runner, infra),
            lambda: MapReduce(a, a).run("t", ["x"], runner, infra),
        ]
        for call in calls:
            with pytest.raises(TypeError) as ei:
                await call()
            assert what in str(ei.value) and "carmulti.testing.FunctionRunner" in str(ei.value)
        with pytest.raises(TypeError, match="carmulti.testing.FunctionRunner"):
            AgentPool(runner, 2, infra=infra)
        assert infra.budget.snapshot().agents_started == 0


async def test_a_runner_blocking_the_loop_past_its_timeout_is_named_and_timed_out():
    """Locally, ``time.sleep`` in a runner silently outlived ``agent_timeout_s``."""
    async with SharedInfra(agent_timeout_s=0.1) as infra:
        agents = [AgentSpec("sleeper", metadata={"block": 0.3}), AgentSpec("fine")]
        with pytest.warns(RuntimeWarning, match=r"agent 'sleeper' blocked the event loop for 0\.\d+s in one step"):
            res = await Swarm(agents).run("t", Blocker(), infra)
    assert res.outputs[0].error == "timeout after 0.1s"
