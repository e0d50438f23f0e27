"""Coordination budget: limits, ``>=`` crossing, the max_agents hard cap, snapshots, skip
markers, pickling by shared-memory name."""

from __future__ import annotations

import pickle
import threading

import pytest

from carmulti import (
    AgentOutput,
    BudgetError,
    BudgetLimits,
    BudgetSnapshot,
    CoordinationBudget,
    MultiError,
    SharedInfra,
    TokenAccounting,
    budget_skipped_output,
    is_budget_skipped,
)


@pytest.fixture
def make_budget():
    made: list[CoordinationBudget] = []

    def factory(**limits) -> CoordinationBudget:
        b = CoordinationBudget(BudgetLimits(**limits))
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def test_limits_defaults_and_is_unbounded():
    assert BudgetLimits().is_unbounded
    for kw in ({"max_input_tokens": 1}, {"max_output_tokens": 1}, {"max_total_tokens": 1},
               {"max_cost_usd": 0.1}, {"max_agents": 1}):
        assert not BudgetLimits(**kw).is_unbounded


@pytest.mark.parametrize("kw", [{"max_agents": -1}, {"max_total_tokens": 1.5}, {"max_cost_usd": -0.1},
                                {"max_cost_usd": float("nan")}, {"max_input_tokens": True}])
def test_limits_validation(kw):
    with pytest.raises(ValueError):
        BudgetLimits(**kw)


def test_unbounded_budget_never_refuses(make_budget):
    b = make_budget()
    for _ in range(50):
        b.begin_agent()
    b.record(TokenAccounting(10**9, 10**9, 1e6))
    snap = b.snapshot()
    assert snap.agents_started == 50 and not snap.exhausted


def test_record_sums_tokens_and_cost(make_budget):
    b = make_budget()
    b.record(TokenAccounting(100, 0, 0.0))
    b.record(TokenAccounting(100, 0, 0.0))
    b.record(TokenAccounting(3, 4, 0.25))
    b.record(None)
    snap = b.snapshot()
    assert isinstance(snap, BudgetSnapshot)
    assert (snap.input_tokens, snap.output_tokens, snap.total_tokens) == (203, 4, 207)
    assert snap.cost_usd == pytest.approx(0.25)
    assert snap.agents_started == 0
    assert snap.limits == BudgetLimits()


def test_record_rejects_negative_spend(make_budget):
    with pytest.raises(ValueError):
        make_budget().record(TokenAccounting(-1, 0, 0.0))


@pytest.mark.parametrize(
    ("limits", "spend", "reason_start"),
    [
        ({"max_total_tokens": 200}, TokenAccounting(150, 50, 0.0), "total tokens 200 >= limit 200"),
        ({"max_input_tokens": 10}, TokenAccounting(10, 0, 0.0), "input tokens 10 >= limit 10"),
        ({"max_output_tokens": 10}, TokenAccounting(0, 10, 0.0), "output tokens 10 >= limit 10"),
        ({"max_cost_usd": 0.5}, TokenAccounting(0, 0, 0.5), "cost $"),
    ],
)
def test_spend_limit_crossed_at_equality(make_budget, limits, spend, reason_start):
    b = make_budget(**limits)
    b.begin_agent()
    b.record(spend)
    assert b.snapshot().exhausted and b.exhausted
    with pytest.raises(BudgetError) as ei:
        b.begin_agent()
    err = ei.value
    assert isinstance(err, MultiError)
    assert err.kind == "exhausted"
    assert str(err).startswith("budget exhausted: " + reason_start)
    assert err.snapshot.exhausted
    assert b.snapshot().agents_started == 1  # a refusal reserves nothing


def test_below_limit_not_exhausted(make_budget):
    b = make_budget(max_total_tokens=200)
    b.record(TokenAccounting(199, 0, 0.0))
    assert not b.snapshot().exhausted
    b.begin_agent()


def test_max_agents_hard_cap_and_text(make_budget):
    b = make_budget(max_agents=3)
    for _ in range(3):
        b.begin_agent()
    for _ in range(5):
        with pytest.raises(BudgetError) as ei:
            b.begin_agent()
        assert str(ei.value) == "agent limit reached: 3/3"
        assert ei.value.kind == "agent_limit" and ei.value.started == 3 and ei.value.max_agents == 3
    assert b.snapshot().agents_started == 3


def test_max_agents_zero(make_budget):
    b = make_budget(max_agents=0)
    with pytest.raises(BudgetError, match=r"^agent limit reached: 0/0$"):
        b.begin_agent()


def test_max_agents_never_exceeded_under_concurrent_threads(make_budget):
    b = make_budget(max_agents=37)
    admitted = [0] * 8

    def worker(i: int) -> None:
        for _ in range(200):
            try:
                b.begin_agent()
                admitted[i] += 1
            except BudgetError:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 37
    assert b.snapshot().agents_started == 37


def test_snapshot_exhausted_ignores_max_agents(make_budget):
    b = make_budget(max_agents=1)
    b.begin_agent()
    with pytest.raises(BudgetError):
        b.begin_agent()
    assert b.snapshot().exhausted is False


def test_spend_check_comes_before_agent_limit(make_budget):
    b = make_budget(max_agents=1, max_total_tokens=10)
    b.begin_agent()
    b.record(TokenAccounting(10, 0, 0.0))
    with pytest.raises(BudgetError) as ei:
        b.begin_agent()
    assert ei.value.kind == "exhausted"


def test_budget_skipped_output_and_marker():
    out = budget_skipped_output("agent-x", BudgetError("agent_limit", started=2, max_agents=2))
    assert out == AgentOutput(name="agent-x", answer="", turns=0, tool_calls=0, duration_ms=0.0,
                              error="budget skipped: agent limit reached: 2/2")
    assert not out.succeeded
    assert is_budget_skipped(out)
    assert budget_skipped_output("a", "plain reason").error == "budget skipped: plain reason"


@pytest.mark.parametrize(
    ("error", "skipped"),
    [(None, False), ("budget skipped: x", True), ("budget skipped: ", True), ("Budget skipped: x", False),
     ("budget skipped x", False), (" budget skipped: x", False), ("workspace provisioning failed: x", False),
     ("boom", False)],
)
def test_is_budget_skipped_is_exactly_the_prefix(error, skipped):
    assert is_budget_skipped(AgentOutput("a", error=error)) is skipped


def test_pickled_budget_attaches_by_name_and_charges_same_counters(make_budget):
    b = make_budget(max_agents=3, max_total_tokens=1000)
    b.begin_agent()
    b2 = pickle.loads(pickle.dumps(b))
    try:
        assert b2.limits == b.limits
        assert b2.snapshot().agents_started == 1  # attached, not a fresh budget
        b2.begin_agent()
        b2.record(TokenAccounting(40, 2, 0.5))
        snap = b.snapshot()
        assert snap.agents_started == 2
        assert (snap.input_tokens, snap.output_tokens, snap.cost_usd) == (40, 2, pytest.approx(0.5))
        b.begin_agent()
        with pytest.raises(BudgetError, match="agent limit reached: 3/3"):
            b2.begin_agent()  # the cap is shared
    finally:
        b2.close()
    assert b.snapshot().agents_started == 3  # closing the attached copy leaves the owner's counters


def test_closed_budget_keeps_final_values():
    b = CoordinationBudget(BudgetLimits(max_agents=5))
    b.begin_agent()
    b.record(TokenAccounting(1, 2, 0.0))
    b.close()
    b.close()  # idempotent
    snap = b.snapshot()
    assert snap.agents_started == 1 and snap.total_tokens == 3


async def test_shared_infra_budget_methods():
    infra = SharedInfra(budget=BudgetLimits(max_agents=2))
    try:
        infra.begin_agent()
        infra.record_output(AgentOutput("a", "x", tokens=TokenAccounting(5, 6, 0.0)))
        infra.record_output(AgentOutput("b", "y"))  # no tokens: adds nothing
        assert infra.budget.snapshot().total_tokens == 11
        assert infra.with_budget(BudgetLimits(max_agents=1)) is infra
        assert infra.budget.limits.max_agents == 1
        assert infra.budget.snapshot().agents_started == 0  # a fresh budget
        infra.begin_agent()
        with pytest.raises(BudgetError):
            infra.begin_agent()
    finally:
        await infra.aclose()


async def test_shared_infra_rejects_bad_arguments():
    with pytest.raises(TypeError):
        SharedInfra(budget={"max_agents": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SharedInfra(agent_timeout_s=0)


def test_first_budget_of_a_process_sweeps_segments_left_by_dead_coordinators(monkeypatch):
    """Issue 8 finding 11a: a coordinator killed with ``kill -9`` leaves its ``carmulti-{pid}-*``
    segment in /dev/shm; the first budget a process creates removes such segments (once)."""
    import os
    import subprocess
    import sys

    import carmulti.budget as budget_module

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process
    live = os.getppid()  # alive and not ours: its segments are kept

    def fake_segment(pid: int) -> str:
        path = f"/dev/shm/carmulti-{pid}-{os.urandom(8).hex()}"
        with open(path, "wb") as f:
            f.write(bytes(128))
        return path

    dead_seg, live_seg = fake_segment(child.pid), fake_segment(live)
    later_seg = None
    try:
        monkeypatch.setattr(budget_module, "_swept_in_pid", None, raising=False)  # as in a fresh process
        CoordinationBudget().close()
        assert not os.path.exists(dead_seg)
        assert os.path.exists(live_seg)
        later_seg = fake_segment(child.pid)
        CoordinationBudget().close()  # once per process: no second listing of /dev/shm
        assert os.path.exists(later_seg)
    finally:
        for path in (dead_seg, live_seg, later_seg):
            if path is not None and os.path.exists(path):
                os.unlink(path)


def test_begin_agents_reserves_a_round_at_once_only_when_no_limit_can_refuse(make_budget):
    free = make_budget()
    assert free.begin_agents(5) is True
    assert free.begin_agents(0) is True
    assert free.snapshot().agents_started == 5  # as five begin_agent() calls
    for limits in ({"max_agents": 100}, {"max_total_tokens": 10}, {"max_cost_usd": 1.0}):
        capped = make_budget(**limits)
        assert capped.begin_agents(5) is False
        assert capped.snapshot().agents_started == 0  # nothing reserved: each agent goes through begin_agent()


async def test_a_round_counts_every_agent_with_or_without_limits():
    from carmulti import AgentSpec, Swarm

    class Ok:
        async def run(self, spec, task, runtime, mailbox):
            return "ok"

    specs = [AgentSpec(f"a{i}") for i in range(7)]
    async with SharedInfra() as free:
        res = await Swarm(specs).run("t", Ok(), free)
        assert free.budget.snapshot().agents_started == 7 and all(o.succeeded for o in res.outputs)
    async with SharedInfra(budget=BudgetLimits(max_agents=4)) as capped:
        res = await Swarm(specs).run("t", Ok(), capped)
        assert capped.budget.snapshot().agents_started == 4
        assert [is_budget_skipped(o) for o in res.outputs] == [False] * 4 + [True] * 3
