"""The run ceiling: ``SharedInfra(max_turns=N)`` stops starting agents once the coordination's
agents have used N turns in total (issue 12), on every executor."""

from __future__ import annotations

from typing import Any

import pytest

from carmulti import (
    AgentOutput,
    AgentPool,
    AgentSpec,
    BudgetError,
    BudgetExhausted,
    BudgetLimits,
    MapReduce,
    SharedInfra,
    Supervisor,
    Swarm,
    SwarmMode,
    is_budget_skipped,
)
from carmulti.lifecycle import admit

CEILING = "budget skipped: turn ceiling {n} reached"


class TurnsRunner:
    """Answers ``{name} ok`` with ``metadata["turns"]`` turns (default 1); ``metadata["fail"]``: an output
    the runner reports as failed, turns included."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        turns = spec.metadata.get("turns", 1)
        if spec.metadata.get("fail"):
            return AgentOutput(spec.name, "", turns=turns, error="gave up")
        return AgentOutput(spec.name, f"{spec.name} ok", turns=turns)


def agents(n: int, turns: int = 2, prefix: str = "a") -> list[AgentSpec]:
    return [AgentSpec(f"{prefix}{i}", metadata={"turns": turns}) for i in range(n)]


async def test_sequential_agents_stop_once_the_ceiling_is_reached(make_infra):
    infra = make_infra(max_turns=5)
    res = await Swarm(agents(5), SwarmMode.SEQUENTIAL).run("t", TurnsRunner(), infra)
    assert [o.error for o in res.outputs] == [None, None, None, CEILING.format(n=5), CEILING.format(n=5)]
    assert all(is_budget_skipped(o) for o in res.outputs[3:])
    assert infra.turns_used == 6  # the third agent started at 4 < 5 and used 2 (overshoot by agents in flight)
    assert infra.budget.snapshot().agents_started == 3  # a refusal takes no budget slot


async def test_turns_reported_from_worker_processes_count(make_infra):
    infra = make_infra(max_turns=7)
    first = await Swarm(agents(3, turns=3)).run("t", TurnsRunner(), infra)  # parallel: all admitted at 0
    assert all(o.succeeded for o in first.outputs)
    assert infra.turns_used == 9
    second = await Swarm(agents(2, prefix="b")).run("t", TurnsRunner(), infra)
    assert [o.error for o in second.outputs] == [CEILING.format(n=7)] * 2
    assert infra.turns_used == 9


async def test_a_failure_the_runner_reports_counts_its_turns(make_infra):
    infra = make_infra(max_turns=4)
    spec = AgentSpec("quitter", metadata={"turns": 4, "fail": True})
    res = await Swarm([spec, *agents(1)], SwarmMode.SEQUENTIAL).run("t", TurnsRunner(), infra)
    assert res.outputs[0].error == "gave up"
    assert res.outputs[1].error == CEILING.format(n=4)


async def test_a_load_bearing_agent_refused_by_the_ceiling_raises_budget_exhausted(make_infra):
    infra = make_infra(max_turns=2)
    sup = Supervisor(agents(2, turns=1), AgentSpec("boss", metadata={"turns": 1}), max_rounds=1)
    with pytest.raises(BudgetExhausted) as info:
        await sup.run("t", TurnsRunner(), infra)
    assert str(info.value) == "coordination budget exhausted: turn ceiling 2 reached"


async def test_a_reducer_refused_by_the_ceiling_raises_with_the_mappers_attached(make_infra):
    infra = make_infra(max_turns=3)
    mr = MapReduce(AgentSpec("m", metadata={"turns": 1}), AgentSpec("r"), max_concurrent=3)
    with pytest.raises(BudgetExhausted, match="turn ceiling 3 reached") as info:
        await mr.run("t", ["x", "y", "z"], TurnsRunner(), infra)
    assert [o.succeeded for o in info.value.partial.map_outputs] == [True, True, True]


async def test_a_synthesizer_refused_by_the_ceiling_falls_back(make_infra):
    infra = make_infra(max_turns=2)
    swarm = Swarm(agents(2, turns=1)).with_synthesizer(AgentSpec("synth"))
    res = await swarm.run("t", TurnsRunner(), infra)
    assert res.final_summary == "## a0\na0 ok\n\n## a1\na1 ok"


async def test_the_pool_is_gated_too():
    async with SharedInfra(max_turns=1) as infra:
        pool = AgentPool(TurnsRunner(), 1, infra=infra)
        pool.fan_out([(s, "t") for s in agents(3, turns=1)])
        outs = await pool.join_all()
    assert [outs[i].error for i in (1, 2, 3)] == [None, CEILING.format(n=1), CEILING.format(n=1)]


async def test_no_ceiling_by_default_and_zero_refuses_everything():
    async with SharedInfra() as infra:
        assert infra.max_turns is None
        await Swarm(agents(3, turns=100), SwarmMode.SEQUENTIAL).run("t", TurnsRunner(), infra)
        assert infra.turns_used == 300
    async with SharedInfra(max_turns=0) as infra:
        res = await Swarm(agents(2)).run("t", TurnsRunner(), infra)
        assert [o.error for o in res.outputs] == [CEILING.format(n=0)] * 2


async def test_the_gate_checks_the_ceiling_before_the_budget():
    async with SharedInfra(max_turns=1, budget=BudgetLimits(max_agents=5)) as infra:
        admit(infra)
        infra.record_output(AgentOutput("x", "y", turns=1))
        with pytest.raises(BudgetError) as info:
            admit(infra)
        err = info.value
        assert (err.kind, err.max_turns, str(err)) == ("turn_ceiling", 1, "turn ceiling 1 reached")
        assert infra.budget.snapshot().agents_started == 1


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3"])
async def test_max_turns_must_be_an_int_at_least_zero(bad):
    with pytest.raises(ValueError, match=r"^SharedInfra max_turns must be an int >= 0 or None, got "):
        SharedInfra(max_turns=bad)
