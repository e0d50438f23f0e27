"""The paced collector (carmulti.executors.gcpace): automatic collection is off while big batches run
(and in process workers), reference cycles are still freed, the program's own choice is kept, and a
collection predicted to cost more than its share of the time waits."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import weakref
from typing import Any, Iterator

import pytest

from carmulti import AgentOutput, AgentSpec, Fleet, MapReduce, ProcessExecutor, SharedInfra, Swarm
from carmulti.executors import gcpace
from carmulti.testing import EchoRunner


class _Node:
    def __init__(self) -> None:
        self.other: Any = None


def _cycle() -> weakref.ref[_Node]:
    """A two-object reference cycle nothing else points to; only the cyclic collector frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def fast_pacer(monkeypatch: pytest.MonkeyPatch) -> Iterator[gcpace.GcPacer]:
    monkeypatch.setattr(gcpace, "GC_CHECK_S", 0.01)
    monkeypatch.setattr(gcpace, "GC_MIN_ALLOCS", 10)
    pacer = gcpace.GcPacer()
    yield pacer
    pacer.stop()
    gc.enable()


async def test_the_pacer_replaces_automatic_collection_and_still_frees_cycles(fast_pacer: gcpace.GcPacer) -> None:
    assert gc.isenabled()
    fast_pacer.start(asyncio.get_running_loop())
    assert not gc.isenabled() and fast_pacer.running
    ref = _cycle()
    keep = [[] for _ in range(100)]  # net allocations past GC_MIN_ALLOCS
    for _ in range(200):
        if ref() is None:
            break
        await asyncio.sleep(0.01)
    assert ref() is None, "a reference cycle made while the pacer ran was never collected"
    assert fast_pacer.collections >= 1 and fast_pacer.collecting_s > 0
    del keep
    fast_pacer.stop()
    assert gc.isenabled() and not fast_pacer.running


async def test_a_collection_predicted_to_exceed_its_share_waits(fast_pacer: gcpace.GcPacer) -> None:
    fast_pacer.start(asyncio.get_running_loop())
    ref = _cycle()
    keep = [[] for _ in range(100)]
    # the last collection took 10 s on a heap this size and just ended: the next may start in 200 s
    fast_pacer._last_took, fast_pacer._last_blocks = 10.0, sys.getallocatedblocks()
    fast_pacer._last_end = time.monotonic()
    await asyncio.sleep(0.1)  # ten checks
    assert ref() is not None and fast_pacer.collections == 0
    fast_pacer._last_took = 1e-9  # a cheap heap: the next check collects
    for _ in range(100):
        if ref() is None:
            break
        await asyncio.sleep(0.01)
    assert ref() is None and fast_pacer.collections == 1
    del keep


async def test_gc_relax_leaves_a_collector_the_program_disabled_alone() -> None:
    gc.disable()
    try:
        gcpace.gc_relax()
        assert not gcpace._pacer.running
        gcpace.gc_restore()
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_nested_batches_share_one_pacer_and_the_last_restore_enables_the_collector() -> None:
    gcpace.gc_relax()
    gcpace.gc_relax()
    assert gcpace._pacer.running and not gc.isenabled()
    gcpace.gc_restore()
    assert gcpace._pacer.running and not gc.isenabled()
    gcpace.gc_restore()
    assert not gcpace._pacer.running and gc.isenabled()


class _GcProbe:
    """Answers with whether the cyclic collector is enabled where the agent runs."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        return AgentOutput(spec.name, str(gc.isenabled()), turns=1)


async def test_a_big_local_batch_runs_paced_and_gives_the_collector_back() -> None:
    async with SharedInfra() as infra:
        res = await Swarm([AgentSpec(f"a{i}") for i in range(gcpace.GC_RELAX_AT)]).run("t", _GcProbe(), infra)
        small = await Swarm([AgentSpec("b0"), AgentSpec("b1")]).run("t", _GcProbe(), infra)
    assert {o.answer for o in res.outputs} == {"False"}
    assert {o.answer for o in small.outputs} == {"True"}  # small batches leave the collector as it is
    assert gc.isenabled() and not gcpace._pacer.running


def _young_collections() -> tuple[list[int], Any]:
    """A list that gets a generation for every automatic young or middle collection, and its gc callback."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] < 2:
            seen.append(info["generation"])
    return seen, callback


@pytest.mark.parametrize("pattern", ["swarm", "fleet", "map_reduce"])
async def test_a_big_round_is_paced_from_building_its_jobs_to_concluding_them(pattern: str) -> None:
    # Building the jobs and concluding the runs allocate as much as running them: with the automatic
    # collector on there, every young collection rescans the round's survivors.
    n = 3 * gcpace.GC_RELAX_AT
    specs = [AgentSpec(f"a{i}", system_prompt="p") for i in range(n)]
    coordination: Any
    if pattern == "swarm":
        coordination = Swarm(specs)
    elif pattern == "fleet":
        coordination = Fleet(specs)
    else:
        coordination = MapReduce(AgentSpec("m"), AgentSpec("r"), max_concurrent=n)
    seen, callback = _young_collections()
    async with SharedInfra() as infra:
        gc.collect()
        gc.callbacks.append(callback)
        try:
            if pattern == "map_reduce":
                res: Any = await coordination.run("t", ["x"] * n, EchoRunner(), infra)
                outputs = res.map_outputs
            elif pattern == "fleet":
                outputs = (await coordination.run(EchoRunner(), infra)).outputs
            else:
                outputs = (await coordination.run("t", EchoRunner(), infra)).outputs
        finally:
            gc.callbacks.remove(callback)
    assert len(outputs) == n and all(o.succeeded for o in outputs)
    assert seen == [], f"{len(seen)} automatic young collections during a paced round of {n} agents"
    assert gc.isenabled() and not gcpace._pacer.running


class _WorkerCycles:
    """In a worker: is the collector automatic, and is a reference cycle freed while the agent waits?"""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        enabled = gc.isenabled()
        ref = _cycle()
        keep = [[] for _ in range(gcpace.GC_MIN_ALLOCS + 10_000)]
        for _ in range(400):
            if ref() is None:
                break
            await asyncio.sleep(0.01)
        del keep
        return AgentOutput(spec.name, f"enabled={enabled} freed={ref() is None}", turns=1)


async def test_process_workers_pace_their_collector_and_still_free_cycles() -> None:
    async with SharedInfra(executor=ProcessExecutor(workers=1)) as infra:
        res = await Swarm([AgentSpec("w")]).run("t", _WorkerCycles(), infra)
    assert res.outputs[0].answer == "enabled=False freed=True", res.outputs[0].error


def _in_generation(obj: object, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


async def test_stop_promotes_what_the_window_left_alive_to_the_oldest_generation_unscanned() -> None:
    pacer = gcpace.GcPacer()
    pacer.start(asyncio.get_running_loop())
    gc.collect()
    survivor: list[Any] = [[]]  # made while the pacer ran, after the last collection (young), alive when it stops
    assert _in_generation(survivor, 0)
    pacer.stop()
    assert gc.isenabled()
    assert _in_generation(survivor, 2) and not _in_generation(survivor, 0)
    assert gc.get_count()[0] < 10  # the young generation starts empty: the next young collection scans none of it
    assert pacer.collections == 0


async def test_stop_collects_instead_once_enough_was_promoted_and_cycles_are_freed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpace, "GC_MIN_ALLOCS", 1000)
    pacer = gcpace.GcPacer()
    gc.collect()
    pacer.start(asyncio.get_running_loop())
    ref = _cycle()
    keep = [[] for _ in range(600)]
    pacer.stop()  # 600 promoted: under the 1000, no collection
    assert pacer.collections == 0 and ref() is not None  # the cycle waits in the oldest generation
    pacer.start(asyncio.get_running_loop())
    keep += [[] for _ in range(600)]
    pacer.stop()  # 1200 promoted since the last full collection: this stop collects
    assert pacer.collections == 1 and ref() is None
    del keep


async def test_stop_leaves_objects_the_program_froze_frozen() -> None:
    gc.collect()
    frozen: list[Any] = [[]]
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        assert before > 0
        pacer = gcpace.GcPacer()
        pacer.start(asyncio.get_running_loop())
        pacer.stop()
        assert gc.get_freeze_count() == before and gc.isenabled()
        assert not _in_generation(frozen, 2)
    finally:
        gc.unfreeze()
