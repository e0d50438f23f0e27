"""``infra.log.subscribe()`` during real coordinations: live on every executor, and bounded when
nobody reads it (a cursor, never a buffer)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from typing import Any

import pytest

from carmulti import AgentSpec, Fleet, SharedInfra, Swarm


class NoteRunner:
    """Appends one ``note`` event naming the agent, then answers."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        runtime.log.append("note", {"agent": spec.name}, agent=spec.name)
        if spec.metadata.get("pause"):
            await asyncio.sleep(0.001)
        return "ok"


async def test_a_subscriber_follows_a_swarm_live(make_infra):
    infra = make_infra()
    names = [f"a{i}" for i in range(20)]
    seen: list[str] = []
    first_seen = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        async with contextlib.aclosing(infra.log.subscribe()) as sub:
            async for e in sub:
                assert e.kind == "note"
                seen.append(e.agent)
                if not first_seen.done():
                    first_seen.set_result(None)
                if len(seen) == len(names):
                    return

    follower = asyncio.ensure_future(follow())
    res = await Swarm([AgentSpec(n, metadata={"pause": True}) for n in names]).run("t", NoteRunner(), infra)
    await asyncio.wait_for(follower, 10)
    assert first_seen.done()
    assert all(o.succeeded for o in res.outputs)
    assert sorted(seen) == sorted(names)
    assert seen == [e.agent for e in infra.log.events()]  # the log's order


#: asyncio's own task bookkeeping: the table of its task registry (a ``WeakSet``) is rebuilt at a size
#: that depends on how many of its entries were live or dead when it last filled up (4 MiB for 262,144
#: slots), which an earlier test in the same process can change.
_NOT_OURS = [tracemalloc.Filter(False, "*/asyncio/*"), tracemalloc.Filter(False, "*/_weakrefset.py")]


def _traced() -> int:
    """Bytes traced now, without asyncio's own bookkeeping (:data:`_NOT_OURS`)."""
    return sum(t.size for t in tracemalloc.take_snapshot().filter_traces(_NOT_OURS).traces)


async def _fanout(n: int, *, subscribe: bool = False, trace: bool = True) -> tuple[int, Any]:
    """Traced memory growth of an ``n``-agent local fleet whose agents each append an event
    (outputs dropped: what stays is the log, the state and, if any, the subscription)."""
    agents = [AgentSpec(f"a{i}") for i in range(n)]
    grown, got = 0, None
    async with SharedInfra() as infra:
        gc.collect()
        if trace:
            tracemalloc.start()
        try:
            base = _traced() if trace else 0
            sub = infra.log.subscribe(maxsize=1000) if subscribe else None
            res = await Fleet(agents).run(NoteRunner(), infra)
            assert res.succeeded == n and len(infra.log) == n
            del res
            await asyncio.sleep(0)  # the step that resumed from the gather holds its tasks until it yields
            gc.collect()
            grown = _traced() - base if trace else 0
        finally:
            tracemalloc.stop()
        if sub is not None:
            got = await anext(sub), await anext(sub)
            await sub.aclose()
    return grown, got


@pytest.mark.slow
async def test_a_subscriber_that_never_reads_stays_bounded_during_a_100k_agent_fanout():
    n = 100_000
    # the loop's and asyncio's task bookkeeping keep the size they grew to: one untraced
    # run first, so that neither measured run pays for it (and asyncio's is not counted: _NOT_OURS)
    await _fanout(n, trace=False)
    without, _ = await _fanout(n)
    with_sub, got = await _fanout(n, subscribe=True)
    # the log and the state hold ~460 bytes per agent either way (measured: the two runs
    # differ by the subscription object, ~100 bytes); a per-subscriber buffer of even one
    # pointer per event would add 800 KB
    assert without > n * 100
    assert abs(with_sub - without) < 64 * 1024, (with_sub, without)
    gap, nxt = got
    assert gap.kind == "gap" and gap.data == {"from": 0, "to": n - 1000 - 1}
    assert nxt.kind == "note" and nxt.seq == n - 1000
