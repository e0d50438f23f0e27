"""MapReduce scale features: tree reduction (``reduce_fan_in``) and ``stream()``."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from carmulti import (AgentOutput, AgentSpec, BudgetExhausted, BudgetLimits, LocalExecutor, MapReduce, SharedInfra,
                      is_budget_skipped)
from carmulti.testing import EchoRunner

from .doubles import spec


class SumRunner:
    """Mappers answer 1; reducers sum the answers listed in their task and record how many they saw."""

    async def run(self, spec: AgentSpec, task: str, runtime, mailbox) -> AgentOutput:
        if spec.name.startswith("r"):
            lines = task.split("\nMapper outputs:\n", 1)[1].splitlines()
            total = sum(int(ln.rsplit(": ", 1)[1]) for ln in lines)
            return AgentOutput(spec.name, str(total), outcome={"seen": len(lines)})
        return AgentOutput(spec.name, "1")


@pytest.mark.parametrize("n,k,levels", [(10, 3, 2), (64, 64, 0), (65, 64, 1), (1000, 8, 3)])
async def test_tree_reduction_never_shows_a_reducer_more_than_fan_in(make_infra, n, k, levels):
    infra = make_infra()
    res = await MapReduce(spec("m"), spec("r"), 8, reduce_fan_in=k).run("count", ["x"] * n, SumRunner(), infra)
    assert res.reduced_answer == str(n)
    assert all(o.outcome["seen"] <= k for o in res.reduce_outputs)
    assert len({o.name.split("_")[1] for o in res.reduce_outputs}) == levels
    # level-1 reducers are named r_l1_0 .. and cover the mapper answers in item order
    if levels:
        first = [o for o in res.reduce_outputs if o.name.startswith("r_l1_")]
        assert [o.name for o in first] == [f"r_l1_{j}" for j in range(-(-n // k))]
        assert sum(int(o.answer) for o in first) == n


async def test_flat_reduce_without_fan_in_sees_everything(make_infra):
    infra = make_infra()
    res = await MapReduce(spec("m"), spec("r"), 4).run("count", ["x"] * 30, SumRunner(), infra)
    assert res.reduced_answer == "30" and res.reduce_outputs == []


def test_reduce_fan_in_must_be_at_least_two():
    with pytest.raises(ValueError, match="reduce_fan_in must be an int >= 2"):
        MapReduce(spec("m"), spec("r"), reduce_fan_in=1)


async def test_stream_yields_every_item_once_as_it_finishes():
    class Slow:
        async def run(self, spec, task, runtime, mailbox):
            i = int(task.rsplit("\n", 1)[1])
            await asyncio.sleep(0.001 * (20 - i))  # later items finish first
            return f"done {i}"

    async with SharedInfra() as infra:
        got = [(i, o.answer) async for i, o in MapReduce(spec("m"), spec("r"), 20).stream("t", [str(i) for i in range(20)], Slow(), infra)]
    assert sorted(got) == [(i, f"done {i}") for i in range(20)]
    assert [i for i, _ in got] != list(range(20))  # completion order, not item order


async def test_stream_pulls_items_lazily_from_an_async_source_with_bounded_live_agents():
    live = {"now": 0, "max": 0}
    pulled = []

    class Counting:
        async def run(self, spec, task, runtime, mailbox):
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
            await asyncio.sleep(0)
            live["now"] -= 1
            return "ok"

    async def source():
        for i in range(200):
            pulled.append(i)
            yield str(i)

    async with SharedInfra() as infra:
        n = 0
        async for _i, out in MapReduce(spec("m"), spec("r"), 5).stream("t", source(), Counting(), infra):
            assert out.succeeded
            n += 1
    assert n == 200 and len(pulled) == 200
    assert live["max"] <= 5


async def test_leaving_a_stream_early_cancels_the_rest():
    sleepy = EchoRunner("ok", latency_s=0.01)
    async with SharedInfra() as infra:
        async with contextlib.aclosing(MapReduce(spec("m"), spec("r"), 4).stream("t", (str(i) for i in range(10_000)), sleepy, infra)) as s:
            seen = 0
            async for _ in s:
                seen += 1
                if seen == 12:
                    break
        started = infra.budget.snapshot().agents_started
    assert seen == 12
    assert started < 40  # the source was not drained: feeders stopped with the stream


async def test_stream_rejects_a_non_str_item_and_names_its_index():
    async with SharedInfra() as infra:
        with pytest.raises(TypeError, match=r"items\[2\] must be a str, got int"):
            async for _ in MapReduce(spec("m"), spec("r"), 1).stream("t", ["a", "b", 3, "d"], SumRunner(), infra):
                pass


async def test_stream_gates_each_mapper_on_the_budget():
    async with SharedInfra(budget=BudgetLimits(max_agents=3)) as infra:
        outs = [o async for _, o in MapReduce(spec("m"), spec("r"), 2).stream("t", ["a"] * 7, SumRunner(), infra)]
    assert sum(o.succeeded for o in outs) == 3
    assert sum(is_budget_skipped(o) for o in outs) == 4


async def test_closing_a_stream_over_an_async_source_early_does_not_hang():
    # the pump that reads an async source used to wait forever for room in its full queue
    # to post end markers after it was cancelled
    async def items():
        for i in range(100):
            yield f"y{i}"

    async with SharedInfra() as infra:
        mr = MapReduce(spec("m"), spec("r"), 2)
        async with contextlib.aclosing(mr.stream("t", items(), EchoRunner(), infra)) as s:
            async for i, out in s:
                assert out.succeeded
                break


async def test_all_at_once_map_keeps_item_order_and_the_agent_gate_across_slices(make_infra):
    """max_concurrent >= items: mappers go out in slices of MAP_SLICE; outputs, names and the
    max_agents gate stay in item order."""
    from carmulti.patterns.map_reduce import MAP_SLICE

    n = 2 * MAP_SLICE + 10
    infra = make_infra(budget=BudgetLimits(max_agents=MAP_SLICE + 5))  # the reducer gets no slot either
    with pytest.raises(BudgetExhausted) as ei:  # the reducer is denied, with the partial result
        await MapReduce(spec("m"), spec("r"), n).run("t", [str(i) for i in range(n)], NamedAnswer(), infra)
    outs = ei.value.partial.map_outputs
    assert [o.name for o in outs] == [f"m_{i}" for i in range(n)]
    assert [o.error for o in outs[:MAP_SLICE + 5] if not o.succeeded] == []
    assert [o.answer for o in outs[:2]] == ["m_0 done", "m_1 done"]
    assert all(is_budget_skipped(o) for o in outs[MAP_SLICE + 5:])


async def test_all_at_once_map_starts_agents_before_the_last_slice_is_admitted():
    from carmulti.patterns.map_reduce import MAP_SLICE

    n = 4 * MAP_SLICE
    admitted_when_first_ran: list[int] = []
    async with SharedInfra() as infra:

        class Probe:
            async def run(self, spec, task, runtime, mailbox):
                if spec.name == "m_0":
                    admitted_when_first_ran.append(infra.budget.snapshot().agents_started)
                return "ok"

        res = await MapReduce(spec("m"), spec("r"), n).run("t", ["x"] * n, Probe(), infra)
    assert len(res.map_outputs) == n and all(o.succeeded for o in res.map_outputs)
    assert admitted_when_first_ran[0] <= 2 * MAP_SLICE  # not after every one of the 4 slices was admitted


class NamedAnswer:
    async def run(self, spec, task, runtime, mailbox):
        await asyncio.sleep(0)
        return f"{spec.name} done"
