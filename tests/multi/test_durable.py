"""Durable runs (issue 11): ``SharedInfra(journal=PATH)`` records every agent that succeeds; a rerun
replays them and runs only the rest; ``ReplayRunner`` answers from a journal.

Runners here count their calls by appending a line to a file (``LineRunner``): the only count that
holds on every executor (worker processes, Ray actors) and across a coordinator killed with SIGKILL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from carmulti import (
    Action,
    ActionProposal,
    ActionType,
    AgentFailed,
    AgentOutput,
    AgentSpec,
    BudgetLimits,
    Delegator,
    LogCorruptedError,
    MapReduce,
    ReplayDivergence,
    SharedInfra,
    SpawnSubtask,
    Supervisor,
    Swarm,
    SwarmMode,
    TokenAccounting,
)
from carmulti.durable import DONE_KIND, read_records
from carmulti.testing import ReplayRunner


class LineRunner:
    """Appends ``"{tag} {agent}"`` to ``path`` per call (from whichever process runs it) and answers from
    the spec and the task only: mappers ``"{item}={len}"``, reducers the sum of their lines, a
    supervisor ``APPROVED`` once the workers answered its feedback, a main agent with
    ``metadata["calls"]`` issues them as tool calls. Every agent writes ``note.{name}`` to the state
    through its runtime and reports a spend with an exactly representable cost."""

    def __init__(self, path: str | os.PathLike[str], tag: str) -> None:
        self.path, self.tag = os.fspath(path), tag

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{self.tag} {spec.name}\n".encode())
        finally:
            os.close(fd)
        md = spec.metadata
        tool_calls = 0
        if md.get("role") == "reducer":
            lines = task.split("\nMapper outputs:\n", 1)[1].splitlines()
            answer = f"{spec.name}={sum(int(ln.rsplit('=', 1)[1]) for ln in lines)}"
        elif md.get("role") == "mapper":
            item = task.rsplit("\n", 1)[1]
            answer = f"{item}={len(item)}"
        elif md.get("role") == "supervisor":
            answer = "APPROVED" if "(revised)" in task else "revise: say more"
        elif "calls" in md:
            results = []
            for i, (tool, params) in enumerate(md["calls"]):
                action = Action(id=f"c{i}", action_type=ActionType.TOOL_CALL, tool=tool, parameters=params)
                res = await runtime.execute(ActionProposal(id=f"p{i}", source=spec.name, actions=[action]))
                results.append(res.results[0].output)
            tool_calls = len(results)
            answer = orjson.dumps(results).decode()
        else:
            answer = f"{spec.name} on {task[-30:]!r}" + (" (revised)" if "Supervisor feedback" in task else "")
        runtime.state.set(f"note.{spec.name}", len(task), spec.name)
        return AgentOutput(spec.name, answer, turns=1, tool_calls=tool_calls,
                           tokens=TokenAccounting(len(task) % 97 + 1, len(answer) % 89 + 1, 0.25))


def lines(path: Path, tag: str | None = None) -> list[str]:
    if not path.exists():
        return []
    out = [ln.split(" ", 1) for ln in path.read_text().splitlines()]
    return [name for t, name in out if tag is None or t == tag]


def budget(infra: SharedInfra) -> tuple[int, int, float, int]:
    s = infra.budget.snapshot()
    return s.input_tokens, s.output_tokens, s.cost_usd, s.agents_started


# -- kill -9 of the coordinator, five times, then resume ----------------------------------------------------------

KILL_SCRIPT = '''
import os, sys, time
import orjson
import carmulti
from carmulti import AgentOutput, AgentSpec, MapReduce, ProcessExecutor, SharedInfra, TokenAccounting


class LineRunner:  # one line per call, appended by whichever worker runs the agent
    def __init__(self, path, tag):
        self.path, self.tag, self._fd = path, tag, None

    def __getstate__(self):
        return {"path": self.path, "tag": self.tag}

    def __setstate__(self, s):
        self.path, self.tag, self._fd = s["path"], s["tag"], None

    async def run(self, spec, task, runtime, mailbox):
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, f"{self.tag} {spec.name}\\n".encode())
        if spec.metadata.get("role") == "reducer":
            lines = task.split("\\nMapper outputs:\\n", 1)[1].splitlines()
            total = sum(int(ln.rsplit("=", 1)[1]) for ln in lines)
            return AgentOutput(spec.name, f"{spec.name}={total}", turns=1, tokens=TokenAccounting(1, 1, 0.25))
        item = task.rsplit("\\n", 1)[1]
        return AgentOutput(spec.name, f"{item}={len(item)}", turns=1, tokens=TokenAccounting(2, 3, 0.5))


async def main(journal, calls, n, tag, out):
    items = [f"item {i}" for i in range(n)]
    mr = MapReduce(AgentSpec("m", metadata={"role": "mapper"}), AgentSpec("r", metadata={"role": "reducer"}),
                   MAX_CONCURRENT, reduce_fan_in=100)
    async with SharedInfra(executor=ProcessExecutor(workers=2), journal=journal) as infra:
        await infra.start()
        print("ready", flush=True)
        t0 = time.perf_counter()
        res = await mr.run("count", items, LineRunner(calls, tag), infra)
        wall = time.perf_counter() - t0
        snap = infra.budget.snapshot()
        replayed = infra.replayed
    with open(out, "wb") as f:
        f.write(orjson.dumps({"result": res.to_dict(), "wall_s": wall, "replayed": replayed,
                              "budget": [snap.input_tokens, snap.output_tokens, snap.cost_usd, snap.agents_started]}))


if __name__ == "__main__":
    a = sys.argv
    carmulti.run(main(a[1], a[2], int(a[3]), a[4], a[5]))
'''

KILL_ITEMS = 20_000
MAX_CONCURRENT = 200
KILL_AGENTS = KILL_ITEMS + 200 + 2 + 1  # mappers, reducers of level 1 and 2 (fan-in 100), the final reducer


def _start(script: Path, journal: Path, calls: Path, tag: str, out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(script), str(journal), str(calls), str(KILL_ITEMS), tag, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=script.parent)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the workers are up
    if first != "ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"coordinator did not start: {first!r} {err[-2000:]}")
    return proc


def _finish(proc: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    data: dict[str, Any] = orjson.loads(out.read_bytes())
    return data


def _kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the coordinator, then wait for its orphans (workers notice their parent died) and
    remove the shared memory it could not unlink."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    _, alive = psutil.wait_procs(kids, timeout=20)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"carmulti-{proc.pid}-"):
            os.unlink(os.path.join("/dev/shm", name))


@pytest.mark.timeout(240)
def test_kill9_of_the_coordinator_five_times_then_resume_finishes_the_run_as_if_uninterrupted(tmp_path: Path) -> None:
    """A 20,000-item journaled MapReduce on the process executor, its coordinator SIGKILLed five times
    at random points (fractions of an uninterrupted run's duration, measured here), then rerun to
    the end: the result and the budget totals are the uninterrupted run's, every agent has exactly
    one record, and no agent whose record reached the journal ever runs again. The agents that
    were in flight at a kill (at most ``MAX_CONCURRENT``) had no record yet, so they run again: no
    engine can know whether a runner call cut short by a SIGKILL happened."""
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT.replace("MAX_CONCURRENT", str(MAX_CONCURRENT)))
    ref = _finish(_start(script, tmp_path / "ref.journal", tmp_path / "ref.calls", "ref", tmp_path / "ref.json"),
                  tmp_path / "ref.json")
    assert ref["replayed"] == 0 and ref["budget"][3] == KILL_AGENTS
    assert len(lines(tmp_path / "ref.calls")) == KILL_AGENTS
    work_s = ref["wall_s"]

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    journal, calls, out = tmp_path / "run.journal", tmp_path / "run.calls", tmp_path / "run.json"
    recorded: set[str] = set()  # agents with a record in the journal
    lost = 0
    for attempt in range(5):
        tag = f"a{attempt}"
        proc = _start(script, journal, calls, tag, out)
        time.sleep(rng.uniform(0.03, 0.12) * work_s)  # five kills add up to < 0.6 of the work
        assert proc.poll() is None, f"attempt {attempt} finished before its kill (seed {seed})"
        _kill9(proc)
        ran = lines(calls, tag)
        assert not set(ran) & recorded, f"agents with a record ran again in attempt {attempt} (seed {seed})"
        now = {d["name"] for d in read_records(journal)}
        unrecorded = set(ran) - now  # in flight at the kill
        assert len(unrecorded) <= MAX_CONCURRENT, (attempt, len(unrecorded), seed)
        assert len(ran) == len(set(ran))
        lost += len(unrecorded)
        recorded = now
        print(f"attempt {attempt}: {len(ran)} ran, {len(unrecorded)} lost at the kill, {len(now)} recorded")
    assert 0 < len(recorded) < KILL_AGENTS, f"the kills did not land inside the run (seed {seed})"

    final = _finish(_start(script, journal, calls, "final", out), out)
    assert final["result"] == ref["result"]
    assert final["budget"] == ref["budget"]
    assert final["replayed"] == len(recorded)
    ran = lines(calls, "final")
    assert not set(ran) & recorded and len(ran) == len(set(ran)) == KILL_AGENTS - len(recorded)
    names = [d["name"] for d in read_records(journal)]
    assert len(names) == len(set(names)) == KILL_AGENTS  # every agent answered (recorded) exactly once
    every = lines(calls)
    assert set(every) == set(names) and len(every) == KILL_AGENTS + lost


# -- a changed input runs again, and only what depends on it ---------------------------------------------------------

async def test_resume_with_one_item_changed_runs_only_that_mapper_and_the_reducers_above_it(make_infra, tmp_path):
    journal, calls = tmp_path / "j", tmp_path / "calls"
    mr = MapReduce(AgentSpec("m", metadata={"role": "mapper"}), AgentSpec("r", metadata={"role": "reducer"}), 4,
                   reduce_fan_in=5)
    items = [f"item {i}" for i in range(50)]  # 10 reducers of level 1, 2 of level 2, the final one
    infra = make_infra(journal=journal)
    first = await mr.run("count", items, LineRunner(calls, "first"), infra)
    await infra.aclose()
    assert len(lines(calls, "first")) == 50 + 10 + 2 + 1

    items[7] = "item seven, changed"
    infra = make_infra(journal=journal)
    second = await mr.run("count", items, LineRunner(calls, "second"), infra)
    assert sorted(lines(calls, "second")) == ["m_7", "r", "r_l1_1", "r_l2_0"]
    assert infra.replayed == 50 + 10 + 2 + 1 - 4
    assert second.map_outputs[7].answer == "item seven, changed=19"
    assert [o.answer for i, o in enumerate(second.map_outputs) if i != 7] == \
        [o.answer for i, o in enumerate(first.map_outputs) if i != 7]
    assert second.reduced_answer != first.reduced_answer
    assert budget(infra)[3] == 63
    await infra.aclose()

    infra = make_infra(journal=journal)  # both versions are recorded now: nothing runs
    third = await mr.run("count", items, LineRunner(calls, "third"), infra)
    assert lines(calls, "third") == [] and third.to_dict() == second.to_dict()


async def test_a_resumed_run_has_the_state_and_budget_of_the_original(make_infra, tmp_path):
    """Shared and isolated agents' writes are applied again; spend and agent slots are counted once."""
    journal, calls = tmp_path / "j", tmp_path / "calls"
    mapper = AgentSpec("m", metadata={"role": "mapper"})
    reducer = AgentSpec("r", metadata={"role": "reducer"})
    items = [f"item {i}" for i in range(12)]

    async def both(infra: SharedInfra, tag: str) -> list[Any]:
        a = await MapReduce(mapper, reducer, 3).run("shared", items, LineRunner(calls, tag), infra)
        b = await MapReduce(mapper, reducer, 3).with_isolation().run("isolated", items, LineRunner(calls, tag), infra)
        return [a.to_dict(), b.to_dict()]

    infra = make_infra(journal=journal)
    original = await both(infra, "first")
    state, spent, turns = infra.state.snapshot(), budget(infra), infra.turns_used
    await infra.aclose()
    infra = make_infra(journal=journal)
    assert await both(infra, "again") == original
    assert lines(calls, "again") == []
    assert infra.state.snapshot() == state
    assert budget(infra) == spent and infra.turns_used == turns
    assert infra.replayed == 26


async def test_budget_gating_of_a_resumed_run_matches_the_original(make_infra, tmp_path):
    """``max_agents`` refuses the same agents: replayed ones take their slot as they did."""
    journal, calls = tmp_path / "j", tmp_path / "calls"
    swarm = Swarm([AgentSpec(f"a{i}") for i in range(6)])
    infra = make_infra(journal=journal, budget=BudgetLimits(max_agents=4))
    first = await swarm.run("go", LineRunner(calls, "first"), infra)
    spent = budget(infra)
    await infra.aclose()
    infra = make_infra(journal=journal, budget=BudgetLimits(max_agents=4))
    again = await swarm.run("go", LineRunner(calls, "again"), infra)
    assert again.to_dict() == first.to_dict()
    assert [o.error is None for o in again.outputs] == [True] * 4 + [False] * 2
    assert budget(infra) == spent and lines(calls, "again") == [] and infra.replayed == 4


async def test_failed_agents_have_no_record_and_run_again(tmp_path):
    journal = tmp_path / "j"
    attempts: list[str] = []

    class FlakyRunner:
        async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
            attempts.append(spec.name)
            if spec.name == "b" and attempts.count("b") == 1:
                raise RuntimeError("flaky")
            return f"{spec.name} ok"

    swarm = Swarm([AgentSpec("a"), AgentSpec("b")])
    async with SharedInfra(journal=journal) as infra:
        first = await swarm.run("t", FlakyRunner(), infra)
    assert [o.error for o in first.outputs] == [None, "flaky"]
    async with SharedInfra(journal=journal) as infra:
        second = await swarm.run("t", FlakyRunner(), infra)
        assert infra.replayed == 1
    assert attempts == ["a", "b", "b"]
    assert [o.answer for o in second.outputs] == ["a ok", "b ok"]


# -- replay of recorded patterns --------------------------------------------------------------------------------------

def _patterns() -> dict[str, tuple[Any, str]]:
    workers = [AgentSpec("alice", "Be terse"), AgentSpec("bob", "Be thorough")]
    lead = AgentSpec("lead", "You manage", metadata={"calls": [
        ["delegate", {"specialist": "researcher", "subtask": "find X"}],
        ["delegate", {"specialist": "ghost", "subtask": "haunt"}],
        ["delegate", {"specialist": "writer", "subtask": "write Y"}],
        ["delegate", {"specialist": "researcher", "subtask": "find X"}],  # the same agent twice: occurrences
    ]})
    return {
        "parallel": (Swarm(workers, SwarmMode.PARALLEL), "Name a prime"),
        "sequential": (Swarm(workers, SwarmMode.SEQUENTIAL), "Name a prime"),
        "debate": (Swarm(workers, SwarmMode.DEBATE), "Name a prime"),
        "supervisor": (Supervisor(workers, AgentSpec("boss", metadata={"role": "supervisor"})), "Write a haiku"),
        "delegator": (Delegator(lead, {"researcher": AgentSpec("researcher", "Find"), "writer": AgentSpec("writer")}),
                      "Plan the launch"),
    }


@pytest.mark.parametrize("kind", ["parallel", "sequential", "debate", "supervisor", "delegator"])
async def test_a_recorded_run_resumes_and_replays_without_runner_calls(make_infra, tmp_path, kind):
    pattern, task = _patterns()[kind]
    journal, calls = tmp_path / "j", tmp_path / "calls"
    infra = make_infra(journal=journal)
    recorded = await pattern.run(task, LineRunner(calls, "rec"), infra)
    n, state, spent = len(lines(calls, "rec")), infra.state.snapshot(), budget(infra)
    await infra.aclose()
    if kind == "supervisor":
        assert recorded.approved and len(recorded.rounds) == 2
    if kind == "delegator":
        assert [d.success for d in recorded.delegations] == [True, False, True, True]

    infra = make_infra(journal=journal)  # resume a finished run: everything replayed
    resumed = await pattern.run(task, LineRunner(calls, "resume"), infra)
    assert resumed.to_dict() == recorded.to_dict()
    assert lines(calls, "resume") == [] and infra.replayed == n
    assert infra.state.snapshot() == state and budget(infra) == spent
    await infra.aclose()

    infra = make_infra()  # ReplayRunner, no journal on the coordination
    replayed = await pattern.run(task, ReplayRunner(journal), infra)
    assert replayed.to_dict() == recorded.to_dict()
    assert infra.state.snapshot() == state and budget(infra) == spent
    assert len(lines(calls)) == n  # zero runner calls since the recording

    if kind in ("supervisor", "delegator"):
        with pytest.raises(AgentFailed, match="replay diverged at agent '(boss|lead)'"):
            await pattern.run(task + "!", ReplayRunner(journal), infra)
    else:
        changed = await pattern.run(task + "!", ReplayRunner(journal), infra)
        assert changed.outputs[0].error is not None
        assert changed.outputs[0].error.startswith(
            "replay diverged at agent 'alice': no recorded run of agent 'alice' with this task")
    assert len(lines(calls)) == n


async def test_replay_runner_names_what_differs(tmp_path):
    journal = tmp_path / "j"
    async with SharedInfra(journal=journal) as infra:
        await Swarm([AgentSpec("alice", "Be terse")]).run("Name a prime", LineRunner(tmp_path / "c", "r"), infra)
    rr = ReplayRunner(journal)
    async with SharedInfra() as infra:
        rt = infra.make_runtime("x")
        with pytest.raises(ReplayDivergence) as e1:
            await rr.run(AgentSpec("carol"), "Name a prime", rt, None)
        assert e1.value.agent == "carol"
        assert "no recorded run of agent 'carol'" in e1.value.reason and "'alice'" in e1.value.reason
        with pytest.raises(ReplayDivergence) as e2:
            await rr.run(AgentSpec("alice", "Be terse"), "Name an even prime", rt, None)
        assert "recorded tasks for 'alice' start with 'Name a prime'" in str(e2.value)
        with pytest.raises(ReplayDivergence, match="its spec .* differs"):
            await rr.run(AgentSpec("alice", "Be chatty"), "Name a prime", rt, None)
        out = await rr.run(AgentSpec("alice", "Be terse"), "Name a prime", rt, None)
        assert out.answer == "alice on 'Name a prime'" and rt.state.get("note.alice") == 12
        assert (await rr.run(AgentSpec("alice", "Be terse"), "Name a prime", rt, None)) == out  # repeats the last


async def test_spawn_subtask_resumes_with_its_subagents_replayed(tmp_path):
    journal, calls = tmp_path / "j", tmp_path / "calls"
    main = AgentSpec("main", metadata={"calls": [["spawn_subtask", {"task": "part one"}],
                                                 ["spawn_subtask", {"task": "part two"}]]})
    async with SharedInfra(journal=journal) as infra:
        first = await SpawnSubtask(main).run("big job", LineRunner(calls, "first"), infra)
        spent = budget(infra)
    assert sorted(lines(calls, "first")) == ["main", "main.sub1", "main.sub2"]
    async with SharedInfra(journal=journal) as infra:
        again = await SpawnSubtask(main).run("big job", LineRunner(calls, "again"), infra)
        assert budget(infra) == spent and infra.replayed == 3
    assert again.to_dict() == first.to_dict() and lines(calls, "again") == []


# -- the journal file ---------------------------------------------------------------------------------------------------

async def _record_swarm(journal: Path, calls: Path) -> Any:
    async with SharedInfra(journal=journal) as infra:
        return await Swarm([AgentSpec(f"a{i}") for i in range(4)]).run("t", LineRunner(calls, "rec"), infra)


async def test_a_torn_tail_is_recovered_and_the_run_resumes(tmp_path):
    journal, calls = tmp_path / "j", tmp_path / "calls"
    first = await _record_swarm(journal, calls)
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    assert b'"kind":"agent.done"' in data[last:]  # the last record is a3's
    journal.write_bytes(data[:last + (len(data) - last) // 2])  # a write cut short
    async with SharedInfra(journal=journal) as infra:
        assert infra.log.recovery is not None and infra.log.recovery.torn_offset == last
        again = await Swarm([AgentSpec(f"a{i}") for i in range(4)]).run("t", LineRunner(calls, "again"), infra)
        assert infra.replayed == 3
    assert lines(calls, "again") == ["a3"]
    assert again.to_dict() == first.to_dict()


async def test_a_corrupt_middle_raises_naming_the_offset_and_leaves_the_file_untouched(tmp_path):
    journal, calls = tmp_path / "j", tmp_path / "calls"
    await _record_swarm(journal, calls)
    data = bytearray(journal.read_bytes())
    second = data.find(b"\n") + 1
    data[second + 20] ^= 0x01  # a flipped bit in the second record
    journal.write_bytes(bytes(data))
    with pytest.raises(LogCorruptedError) as e:
        SharedInfra(journal=journal)
    assert e.value.offset == second and str(second) in str(e.value)
    assert journal.read_bytes() == bytes(data)


async def test_aclose_releases_the_journal(tmp_path):
    journal = tmp_path / "j"
    infra = SharedInfra(journal=str(journal))
    with pytest.raises(BlockingIOError):
        SharedInfra(journal=journal)  # one writer at a time
    await Swarm([AgentSpec("a")]).run("t", LineRunner(tmp_path / "c", "x"), infra)
    await infra.aclose()
    assert infra.log.closed and len(infra.log) >= 1  # still readable
    async with SharedInfra(journal=journal) as again:  # the same process may open it now
        assert [e.data["name"] for e in again.log.filter(kind=DONE_KIND)] == ["a"]


def test_journal_arguments_are_checked(tmp_path):
    from carcore import EventLog

    with pytest.raises(ValueError, match="journal=PATH or log=EventLog"):
        SharedInfra(journal=tmp_path / "j", log=EventLog())
    with pytest.raises(TypeError, match="str or os.PathLike"):
        SharedInfra(journal=3)  # type: ignore[arg-type]
    assert not (tmp_path / "j").exists()


async def test_odd_agent_names_and_the_agents_own_events_are_in_the_journal(make_infra, tmp_path):
    """Names with quotes and backslashes are found again on reopening; the agents' own events (here a
    state write through an action) land in the journal with the records, on every executor."""
    journal = tmp_path / "j"

    names = ['say "hi"', "back\\slash", "plain"]
    infra = make_infra(journal=journal)
    first = await Swarm([AgentSpec(n) for n in names]).run("t", LineRunner(tmp_path / "c", "rec"), infra)
    await infra.aclose()
    infra = make_infra(journal=journal)
    again = await Swarm([AgentSpec(n) for n in names]).run("t", LineRunner(tmp_path / "c", "again"), infra)
    assert again.to_dict() == first.to_dict() and infra.replayed == 3 and lines(tmp_path / "c", "again") == []
    await infra.aclose()

    class ActionRunner:
        async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
            action = Action(id="w", action_type=ActionType.STATE_WRITE, parameters={"key": "k", "value": 1})
            await runtime.execute(ActionProposal(id="p", source=spec.name, actions=[action]))
            return "done"

    infra = make_infra(journal=tmp_path / "j2")
    await Swarm([AgentSpec("writer")]).run("t", ActionRunner(), infra)
    await infra.aclose()
    async with SharedInfra(journal=tmp_path / "j2") as reopened:
        kinds = [(e.kind, e.agent) for e in reopened.log]
        assert ("state_changed", "writer") in kinds and kinds[-1] == (DONE_KIND, "writer")
        assert reopened.state.get("k") is None  # nothing replayed yet: the store is fresh
        await Swarm([AgentSpec("writer")]).run("t", ActionRunner(), reopened)
        assert reopened.replayed == 1 and reopened.state.get("k") == 1  # the recorded write, applied again


def test_a_journal_over_an_in_memory_log_indexes_its_records():
    from carcore import EventLog

    from carmulti.durable import Journal
    from carmulti.executors import AgentJob

    log = EventLog()
    j = Journal(log)
    job = AgentJob(AgentSpec("a"), "t")
    key = j.key(job)
    from carmulti.executors import AgentRun

    j.record(key, job, AgentRun(AgentOutput("a", "x", turns=1), None, 1.0))
    j2 = Journal(log)
    rec = j2.take(j2.key(AgentJob(AgentSpec("a"), "t")))
    assert rec is not None and rec["output"]["answer"] == "x" and rec["key"] == key
