"""EventLog.subscribe: a live cursor over the log (order, cursors, gaps, many readers, end)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from carcore import Event, EventLog, Subscription


async def _take(sub: Subscription, k: int) -> list[Event]:
    out = []
    for _ in range(k):
        out.append(await asyncio.wait_for(anext(sub), 5))
    return out


async def _drain(sub: Subscription) -> list[Event]:
    return [e async for e in sub]


def _seqs(events: list[Event]) -> list[tuple[int, str]]:
    return [(e.seq, e.kind) for e in events]


# ------------------------------------------------------------------------------ order, cursors


async def test_yields_existing_events_then_new_appends_in_order():
    log = EventLog()
    log.append("a", 0)
    log.append("b", {"x": [1]}, agent="ag")
    sub = log.subscribe()
    assert isinstance(sub, Subscription) and sub.__aiter__() is sub
    first = await _take(sub, 2)
    assert first == log.events()
    waiting = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing new: it waits
    e = log.append("c", 2)
    assert await asyncio.wait_for(waiting, 5) == e
    log.append_batch([{"kind": "d"}, {"kind": "e", "data": [1, 2]}])
    assert _seqs(await _take(sub, 2)) == [(3, "d"), (4, "e")]
    log.close()
    assert await _drain(sub) == []


async def test_cursor_after_is_exclusive_and_none_is_the_start():
    log = EventLog()
    for i in range(5):
        log.append("k", i)
    log.close()
    assert [e.seq for e in await _drain(log.subscribe())] == [0, 1, 2, 3, 4]
    assert [e.seq for e in await _drain(log.subscribe(after=0))] == [1, 2, 3, 4]
    assert [e.seq for e in await _drain(log.subscribe(after=3))] == [4]
    assert await _drain(log.subscribe(after=4)) == []
    assert await _drain(log.subscribe(after=100)) == []


async def test_cursor_beyond_the_end_waits_for_events_past_it():
    log = EventLog()
    log.append("k", 0)
    sub = log.subscribe(after=2)
    reader = asyncio.ensure_future(_drain(sub))
    for i in range(1, 6):
        log.append("k", i)
        await asyncio.sleep(0)
    log.close()
    assert [e.seq for e in await asyncio.wait_for(reader, 5)] == [3, 4, 5]


def test_bad_arguments():
    log = EventLog()
    with pytest.raises(ValueError, match="after must be >= 0"):
        log.subscribe(after=-1)
    with pytest.raises(TypeError, match="after must be an int or None"):
        log.subscribe(after="3")
    with pytest.raises(TypeError, match="after must be an int or None"):
        log.subscribe(after=True)
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        log.subscribe(maxsize=0)
    with pytest.raises(TypeError, match="maxsize must be an int"):
        log.subscribe(maxsize=2.5)
    with pytest.raises(TypeError, match="use EventLog.subscribe"):
        Subscription()


# ------------------------------------------------------------------------------ falling behind


async def test_gap_once_per_fall_behind_then_continues_maxsize_before_the_end():
    log = EventLog()
    sub = log.subscribe(maxsize=3)
    for i in range(10):
        log.append("k", i)
    got = await _take(sub, 4)
    gap = got[0]
    assert gap.kind == "gap" and gap.data == {"from": 0, "to": 6} and gap.seq == 6
    assert gap.agent is None and gap.ts_ns > 0
    assert [e.seq for e in got[1:]] == [7, 8, 9]
    # up to maxsize behind: no gap
    for i in range(3):
        log.append("k", i)
    assert [e.seq for e in await _take(sub, 3)] == [10, 11, 12]
    # behind again: exactly one more gap
    for i in range(8):
        log.append("k", i)
    got = await _take(sub, 4)
    assert [(e.kind, e.seq) for e in got] == [("gap", 17), ("k", 18), ("k", 19), ("k", 20)]
    assert got[0].data == {"from": 13, "to": 17}
    log.close()
    assert await _drain(sub) == []


async def test_a_gap_seq_is_a_cursor_to_resume_from():
    log = EventLog()
    for i in range(20):
        log.append("k", i)
    log.close()
    sub = log.subscribe(after=2, maxsize=5)
    gap = await anext(sub)
    assert gap.data == {"from": 3, "to": 14}
    rest = await _drain(log.subscribe(after=gap.seq))
    assert [e.seq for e in rest] == list(range(15, 20)) == [e.seq for e in await _drain(sub)]


async def test_a_reader_that_keeps_up_never_sees_a_gap():
    # the lag is measured when the subscriber reads, against the log's end: a reader that
    # keeps within maxsize sees every event, however many are appended in total
    log = EventLog()
    sub = log.subscribe(maxsize=2)
    seen = []
    for i in range(50):
        log.append("k", i)
        if i % 2:
            seen += await _take(sub, 2)
    assert [e.seq for e in seen] == list(range(50)) and all(e.kind == "k" for e in seen)


# ------------------------------------------------------------------------------ many readers


async def test_many_concurrent_subscribers_each_see_every_event_in_order():
    log = EventLog()
    n_events, n_subs = 2000, 60
    subs = [log.subscribe(maxsize=n_events) for _ in range(n_subs)]
    readers = [asyncio.ensure_future(_drain(s)) for s in subs]

    async def produce() -> None:
        for i in range(0, n_events, 100):
            if i % 200:
                log.append_batch([{"kind": "b", "data": j} for j in range(i, i + 100)])
            else:
                for j in range(i, i + 100):
                    log.append("a", j)
            await asyncio.sleep(0)
        log.close()

    await produce()
    results = await asyncio.wait_for(asyncio.gather(*readers), 30)
    for got in results:
        assert [e.seq for e in got] == list(range(n_events))
        assert [e.data for e in got] == list(range(n_events))


async def test_slow_and_fast_subscribers_are_independent():
    log = EventLog()
    fast, slow = log.subscribe(maxsize=1000), log.subscribe(maxsize=10)
    fast_reader = asyncio.ensure_future(_drain(fast))
    for i in range(500):
        log.append("k", i)
        if i % 50 == 0:
            await asyncio.sleep(0)
    log.close()
    got_fast = await asyncio.wait_for(fast_reader, 5)
    got_slow = await _drain(slow)
    assert [e.seq for e in got_fast] == list(range(500))
    assert [(e.kind, e.seq) for e in got_slow[:2]] == [("gap", 489), ("k", 490)]
    assert [e.seq for e in got_slow[1:]] == list(range(490, 500))


async def test_append_from_another_thread_wakes_the_subscriber():
    log = EventLog()
    sub = log.subscribe()
    reader = asyncio.ensure_future(_take(sub, 3))
    await asyncio.sleep(0.01)

    def produce() -> None:
        log.append("t", 0)
        log.append_batch([{"kind": "t", "data": 1}, {"kind": "t", "data": 2}])

    th = threading.Thread(target=produce)
    th.start()
    th.join()
    assert [e.data for e in await asyncio.wait_for(reader, 5)] == [0, 1, 2]


async def test_one_subscription_is_read_by_one_task_at_a_time():
    log = EventLog()
    sub = log.subscribe()
    first = asyncio.ensure_future(anext(sub))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already being read by another task"):
        await anext(sub)
    log.append("k")
    assert (await asyncio.wait_for(first, 5)).seq == 0


# ------------------------------------------------------------------------------ the end


async def test_close_ends_every_subscription_after_what_it_had_not_seen():
    log = EventLog()
    log.append("k", 0)
    waiting = [log.subscribe() for _ in range(5)]
    readers = [asyncio.ensure_future(_drain(s)) for s in waiting]
    await asyncio.sleep(0.01)
    behind = log.subscribe()  # has read nothing when the log closes
    log.append("k", 1)
    log.close()
    for got in await asyncio.wait_for(asyncio.gather(*readers), 5):
        assert [e.seq for e in got] == [0, 1]
    assert [e.seq for e in await _drain(behind)] == [0, 1]
    with pytest.raises(StopAsyncIteration):
        await anext(behind)  # stays ended
    # on a closed log: the events, then the end, at once
    assert [e.seq for e in await _drain(log.subscribe(after=0))] == [1]


async def test_close_of_a_journal_ends_subscriptions_and_a_reopened_log_has_them(tmp_path):
    path = tmp_path / "j.log"
    log = EventLog(path)
    sub = log.subscribe()
    reader = asyncio.ensure_future(_drain(sub))
    log.append("a", 1)
    await asyncio.sleep(0)
    log.close()
    assert [e.kind for e in await asyncio.wait_for(reader, 5)] == ["a"]
    with EventLog.open(path) as again:
        sub2 = again.subscribe()
        assert [e.data for e in await _take(sub2, 1)] == [1]
        again.append("b", 2)
        assert [e.data for e in await _take(sub2, 1)] == [2]


async def test_aclose_ends_a_waiting_reader_and_later_reads():
    log = EventLog()
    sub = log.subscribe()
    reader = asyncio.ensure_future(_drain(sub))
    await asyncio.sleep(0.01)
    await sub.aclose()
    assert await asyncio.wait_for(reader, 5) == []
    log.append("k")
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    await sub.aclose()  # idempotent
    async with contextlib.aclosing(log.subscribe()) as s2:
        async for e in s2:
            assert e.seq == 0
            break
    with pytest.raises(StopAsyncIteration):
        await anext(s2)


async def test_cancelling_a_waiting_reader_leaves_nothing_behind():
    log = EventLog()
    sub = log.subscribe()
    for _ in range(3):
        t = asyncio.ensure_future(anext(sub))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
    assert "next_seq=0" in repr(sub)
    log.append("k", 7)  # no stale waiter to resolve
    assert (await asyncio.wait_for(anext(sub), 5)).data == 7
    # wait_for timing out is a cancellation too
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(anext(sub), 0.01)
    log.append("k", 8)
    assert (await asyncio.wait_for(anext(sub), 5)).data == 8
    log.close()
    assert "done" not in repr(sub)
    assert await _drain(sub) == [] and "done" in repr(sub)


async def test_a_subscription_that_is_never_read_holds_nothing():
    import sys
    import tracemalloc

    log = EventLog()
    sub = log.subscribe(maxsize=10)
    size = sys.getsizeof(sub)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            log.append("k", i)
        grown_with = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert sys.getsizeof(sub) == size
    other = EventLog()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            other.append("k", i)
        grown_without = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert abs(grown_with - grown_without) < 64 * 1024, (grown_with, grown_without)
    got = await _take(sub, 2)
    assert got[0].kind == "gap" and got[0].data == {"from": 0, "to": 19_989} and got[1].seq == 19_990
