"""The agent cap holds exactly when several processes race ``begin_agent()``."""

from __future__ import annotations

import multiprocess as mp
import pytest

from carmulti import BudgetError, BudgetLimits, CoordinationBudget, TokenAccounting


def _race(budget: CoordinationBudget, start, out) -> None:  # runs in a child process
    start.wait()
    admitted = refused = 0
    while True:
        try:
            budget.begin_agent()
        except BudgetError as err:
            assert err.kind == "agent_limit"
            refused += 1
            if refused >= 50:  # keep hammering a while after the first refusal
                break
        else:
            admitted += 1
            budget.record(TokenAccounting(1, 2, 0.5))
    out.put((admitted, refused))


@pytest.mark.parametrize("procs,cap", [(4, 1000), (3, 1)])
def test_processes_racing_begin_agent_admit_exactly_the_cap(procs: int, cap: int) -> None:
    budget = CoordinationBudget(BudgetLimits(max_agents=cap))
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_race, args=(budget, start, out)) for _ in range(procs)]
    try:
        for w in workers:
            w.start()
        start.set()
        results = [out.get(timeout=60) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
                w.join()
    try:
        admitted = sum(a for a, _ in results)
        assert admitted == cap
        snap = budget.snapshot()
        assert snap.agents_started == cap  # a refused reservation is never counted
        # spend recorded from every process lands on the same counters
        assert (snap.input_tokens, snap.output_tokens, snap.total_tokens) == (cap, 2 * cap, 3 * cap)
        assert snap.cost_usd == pytest.approx(0.5 * cap)
        assert not snap.exhausted  # max_agents is not a spend limit
    finally:
        budget.close()
    assert all(w.exitcode == 0 for w in workers)


def _hammer(budget: CoordinationBudget, start, out) -> None:  # runs in a forked child
    start.wait()
    admitted = 0
    for _ in range(200):
        try:
            budget.begin_agent()
        except BudgetError as err:
            assert err.kind == "agent_limit"
        else:
            admitted += 1
    out.put(admitted)


def test_budget_first_used_in_forked_children_keeps_one_cap_and_leaks_no_segment() -> None:
    """Issue 8 finding 7: a budget inherited through fork before its first use is one budget.

    It used to create its shared-memory block lazily, so each child got a private block (the cap
    held per child, not overall) and left a ``carmulti-{child pid}-*`` segment behind.
    """
    import multiprocessing
    import os

    cap, procs = 5, 4
    budget = CoordinationBudget(BudgetLimits(max_agents=cap))  # never touched before the fork
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=_hammer, args=(budget, start, out)) for _ in range(procs)]
    try:
        for c in children:
            c.start()
        start.set()
        admitted = [out.get(timeout=60) for _ in children]
    finally:
        for c in children:
            c.join(timeout=30)
            if c.is_alive():
                c.kill()
                c.join()
        out.close()
        out.join_thread()
    try:
        assert sum(admitted) == cap
        assert budget.snapshot().agents_started == cap
    finally:
        budget.close()
    assert all(c.exitcode == 0 for c in children)
    pids = {str(c.pid) for c in children}
    leaked = [n for n in os.listdir("/dev/shm") if n.startswith("carmulti-") and n.split("-")[1] in pids]
    assert not leaked, f"forked children left shared-memory segments: {leaked}"
