"""``progress=True``: a rich live display on a terminal (counts right on every executor, moving as
agents finish), nothing at all without one, no cost when off."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from carmulti import AgentSpec, BudgetLimits, Fleet, MapReduce, SharedInfra, Swarm, SwarmMode
from carmulti import progress as P
from carmulti.executors import AgentJob, AgentRun

from .doubles import MetaRunner, spec

ROOT = Path(__file__).resolve().parents[2]


class FakeTTY(io.StringIO):
    """A stderr that says it is a terminal (rich then draws its live display into it)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Any:
    """stderr is a terminal; every ``ProgressCounts`` a display creates is recorded.

    Yields:
        ``(stderr, shown)``: the fake terminal and the list of counts displayed.
    """
    for var in ("NO_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR", "CI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    shown: list[P.ProgressCounts] = []

    class Recorded(P.ProgressCounts):
        __slots__ = ()

        def __init__(self, label: str, planned: int | None) -> None:
            super().__init__(label, planned)
            shown.append(self)

    monkeypatch.setattr(P, "ProgressCounts", Recorded)
    err = FakeTTY()
    monkeypatch.setattr(P, "_stderr", lambda: err)  # (sys.stderr itself is pytest's, reset for each phase)
    yield err, shown
    assert not P.TRACKED  # every display unregistered itself


def _text(err: FakeTTY) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err.getvalue())


def _counts(c: P.ProgressCounts) -> tuple[int, int, int, int, int, float]:
    return c.done, c.failed, c.skipped, c.input_tokens, c.output_tokens, round(c.cost_usd, 6)


# ------------------------------------------------------------------------------ counts


async def test_fleet_counts_done_failed_skipped_tokens_and_cost(make_infra, terminal):
    err, shown = terminal
    infra = make_infra(budget=BudgetLimits(max_agents=4))
    agents = [spec("a", "m", tokens=[10, 5, 0.01]), spec("b", "m", tokens=[1, 2, 0.5]),
              spec("c", "m", **{"raise": "boom"}), spec("d", "m", sleep=0.05, tokens=[100, 0, 0.0]),
              spec("e", "m")]
    res = await Fleet(agents).run(MetaRunner(), infra, progress=True)
    assert (res.succeeded, res.failed) == (3, 2)
    (c,) = shown
    assert c.label == "Fleet" and c.planned == 5 and c.finished == 5
    assert _counts(c) == (3, 1, 1, 111, 7, 0.51)
    text = _text(err)
    assert "Fleet" in text and "5/5 agents" in text
    assert "done 3 · failed 1 · skipped 1 · 118 tokens · $0.5100" in text


async def test_swarm_counts_every_round_and_the_synthesizer(make_infra, terminal):
    err, shown = terminal
    infra = make_infra()
    agents = [spec("a", tokens=[1, 1, 0.0]), spec("b", tokens=[1, 1, 0.0]), spec("c", **{"raise": "no"})]
    swarm = Swarm(agents, SwarmMode.DEBATE).with_synthesizer(spec("synth", tokens=[5, 5, 0.0]))
    res = await swarm.run("t", MetaRunner(), infra, progress=True)
    assert len(res.outputs) == 6
    (c,) = shown  # the debate's inner swarms add to the one display
    assert c.label == "Swarm" and c.planned == 6
    # round 1: a, b ok, c fails; round 2: the critiques (c_critique fails too); then the
    # synthesizer of the debate
    assert c.failed == 2 and c.skipped == 0
    assert c.done == sum(o.succeeded for o in res.outputs) + 1 == 5
    assert c.input_tokens == 4 * 1 + 5
    assert f"{c.finished}/{c.finished} agents" in _text(err)


async def test_swarm_sequential_and_budget_skips(make_infra, terminal):
    err, shown = terminal
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    res = await Swarm([spec("a"), spec("b"), spec("c")], SwarmMode.SEQUENTIAL).run("t", MetaRunner(), infra,
                                                                                    progress=True)
    assert [o.succeeded for o in res.outputs] == [True, True, False]
    (c,) = shown
    assert (c.done, c.failed, c.skipped) == (2, 0, 1)
    assert "done 2 · failed 0 · skipped 1" in _text(err)


async def test_map_reduce_counts_mappers_and_reducers(make_infra, terminal):
    err, shown = terminal
    infra = make_infra()
    mr = MapReduce(spec("m", tokens=[2, 3, 0.001]), spec("r", tokens=[7, 0, 0.0]), 3, reduce_fan_in=4)
    res = await mr.run("t", [f"item {i}" for i in range(10)], MetaRunner(), infra, progress=True)
    assert res.all_succeeded and len(res.reduce_outputs) == 3
    (c,) = shown
    assert c.label == "MapReduce" and c.planned == 11
    assert _counts(c) == (14, 0, 0, 20 + 4 * 7, 30, 0.01)
    assert "14/14 agents" in _text(err)


async def test_map_reduce_stream_shows_progress_until_it_ends_or_is_closed(make_infra, terminal):
    err, shown = terminal
    infra = make_infra()
    mr = MapReduce(spec("m"), spec("r"), 2)
    got = [i async for i, _ in mr.stream("t", [f"x{i}" for i in range(6)], MetaRunner(), infra, progress=True)]
    assert sorted(got) == list(range(6))
    assert shown[0].planned == 6 and (shown[0].done, shown[0].failed) == (6, 0)

    async def items():  # an async source: no total, no ETA
        for i in range(100):
            yield f"y{i}"

    async with contextlib.aclosing(mr.stream("t", items(), MetaRunner(), infra, progress=True)) as s:
        async for _ in s:
            assert P.TRACKED
            break
    assert not P.TRACKED
    assert shown[1].planned is None and 1 <= shown[1].finished < 100
    assert re.search(r"\b\d+ agents · done", _text(err))


async def test_counts_move_while_a_parallel_batch_runs(infra, terminal):
    # the last agent waits until the display has counted all the others: it would wait
    # forever if the batch were counted only when it returned
    _, shown = terminal
    n = 250

    class Waiter:
        async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
            if spec.name == "last":
                for _ in range(500):
                    if shown and shown[0].done >= n - 1:
                        return "saw the others"
                    await asyncio.sleep(0.01)
                raise RuntimeError("the others were never counted")
            await asyncio.sleep(0.001 * (hash(spec.name) % 5))
            return "ok"

    agents = [AgentSpec(f"a{i}") for i in range(n - 1)] + [AgentSpec("last")]
    res = await Fleet(agents).run(Waiter(), infra, progress=True)
    assert res.outputs[-1].answer == "saw the others" and res.succeeded == n


# ------------------------------------------------------------------------------ off, no terminal


async def test_off_by_default_and_without_a_terminal(infra, capsys):
    seen: list[bool] = []

    class Probe:
        async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
            seen.append(bool(P.TRACKED))
            return "ok"

    await Fleet([AgentSpec("a"), AgentSpec("b")]).run(Probe(), infra)
    await Swarm([AgentSpec("c")]).run("t", Probe(), infra, progress=True)  # stderr is not a terminal here
    await MapReduce(AgentSpec("m"), AgentSpec("r")).run("t", ["x"], Probe(), infra, progress=True)
    assert seen == [False] * 5
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


async def test_a_failing_executor_cancels_the_other_slices(terminal):
    class Failing:
        async def start(self) -> None: ...

        async def aclose(self) -> None: ...

        async def run_agent(self, runner: Any, job: AgentJob, coordination: Any) -> AgentRun:
            return (await self.run_batch(runner, [job], coordination))[0]

        async def run_batch(self, runner: Any, jobs: Any, coordination: Any) -> list[AgentRun]:
            if any(j.spec.name == "a7" for j in jobs):
                await asyncio.sleep(0.01)
                raise RuntimeError("executor broke")
            await asyncio.sleep(30)
            raise AssertionError("not cancelled")

    async with SharedInfra(executor=Failing()) as infra:
        with pytest.raises(RuntimeError, match="executor broke"):
            await Fleet([AgentSpec(f"a{i}") for i in range(20)]).run(MetaRunner(), infra, progress=True)
    # the conftest's task check: no slice left pending


# ------------------------------------------------------------------------------ a real terminal

SCRIPT = textwrap.dedent("""
    import sys
    import carmulti
    from carmulti import AgentOutput, BudgetLimits, Fleet, ProcessExecutor, SharedInfra, TokenAccounting
    from carmulti import AgentSpec

    class Runner:
        async def run(self, spec, task, runtime, mailbox):
            if spec.name == "bad":
                raise RuntimeError("boom")
            return AgentOutput(spec.name, "ok", turns=1, tokens=TokenAccounting(1000, 234, 0.0125))

    async def main():
        executor = ProcessExecutor(workers=2) if sys.argv[1] == "process" else None
        async with SharedInfra(executor=executor, budget=BudgetLimits(max_agents=6)) as infra:
            agents = [AgentSpec(f"agent{i}") for i in range(5)] + [AgentSpec("bad"), AgentSpec("late")]
            res = await Fleet(agents).run(Runner(), infra, progress=True)
            print("result", res.succeeded, res.failed)
            print("rich" in sys.modules)

    if __name__ == "__main__":
        carmulti.run(main())
""")


@pytest.mark.parametrize("executor", ["local", "process"])
def test_on_a_terminal_the_display_shows_the_counts(tmp_path: Path, executor: str, run_on_pty: Any) -> None:
    script = tmp_path / "fleet_progress.py"
    script.write_text(SCRIPT)
    rc, shown, out = run_on_pty([sys.executable, str(script), executor], cwd=ROOT, columns=200)
    assert rc == 0, out + shown
    assert "Fleet" in shown and "7/7 agents" in shown, shown
    assert "done 5 · failed 1 · skipped 1 · 6,170 tokens · $0.0625" in shown, shown
    assert "agents/s" in shown
    assert out.splitlines() == ["result 5 2", "True"]  # the display is on stderr only


def test_without_a_terminal_nothing_is_written_and_rich_is_not_imported(tmp_path: Path) -> None:
    script = tmp_path / "fleet_progress.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), "process"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["result 5 2", "False"] and proc.stderr == ""
