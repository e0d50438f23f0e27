"""The least a Python engine with one asyncio task per agent does across processes.

The engine-overhead baseline of ``python -m bench fanout --executor process``: a
coordinator sends jobs to ``workers`` processes in orjson frames of ``batch_size``
jobs over a pyzmq ROUTER/DEALER pair (the shape of carmulti's wire); each worker
decodes a frame, starts one uvloop task per job running the same runner
coroutine, and sends the answers back in one frame per loop iteration; the
coordinator decodes them into a list in job order, with at most
``max_inflight_per_worker`` jobs out per worker (carmulti's default, 8,192).

What it leaves out is what carmulti adds per agent: specs, budget gating and
spend, state writes, events, a runtime and mailbox per agent, checks of every
frame both ways, timeouts, failures as values, lost-worker handling. So
``ours / minimal`` is the share of the machine's Python-with-tasks ceiling the
engine keeps.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
from typing import Any, Callable

import orjson
import uvloop

from ._util import BASELINE_WAIT_S, ipc_endpoint, reap, silent

__all__ = ["minimal_engine"]

_STOP = b"stop"


def _worker(endpoint: str) -> None:  # pragma: no cover - child process
    uvloop.run(_serve(endpoint))


async def _serve(endpoint: str) -> None:  # pragma: no cover - child process
    import zmq
    import zmq.asyncio

    from .fanout import ZeroRunner

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    loop = asyncio.get_running_loop()
    runner = ZeroRunner()
    results: list[list[Any]] = []
    sends: set[asyncio.Future[Any]] = set()
    flushing = False

    def flush() -> None:
        nonlocal flushing
        flushing = False
        fut = asyncio.ensure_future(sock.send(orjson.dumps(results)))  # sent at once unless the pipe is full
        results.clear()
        sends.add(fut)
        fut.add_done_callback(sends.discard)

    def done(jid: int, task: asyncio.Task[str]) -> None:
        nonlocal flushing
        results.append([jid, task.result()])
        if not flushing:
            flushing = True
            loop.call_soon(flush)

    try:
        await sock.send(b"ready")
        while True:
            frame = await sock.recv()
            if frame == _STOP:
                break
            for jid, name, task in orjson.loads(frame):
                t = loop.create_task(runner.run(name, task, None, None))
                t.add_done_callback(functools.partial(done, jid))
    finally:
        sock.close(0)
        ctx.term()


async def _coordinate(n: int, workers: int, batch_size: int, inflight_per_worker: int, repeat: int,
                      tick: Callable[[], None]) -> list[float]:
    with ipc_endpoint("engine") as endpoint:
        return await _coordinate_at(endpoint, n, workers, batch_size, inflight_per_worker, repeat, tick)


async def _recv(sock: Any, procs: list[Any], wait_s: float) -> list[bytes]:
    """The next multipart message on ``sock``.

    Raises:
        RuntimeError: nothing came for ``wait_s`` seconds (a worker died or never connected).
    """
    try:
        frames: list[bytes] = await asyncio.wait_for(sock.recv_multipart(), wait_s)
    except asyncio.TimeoutError:
        raise silent("minimal engine", procs, wait_s) from None
    return frames


async def _coordinate_at(endpoint: str, n: int, workers: int, batch_size: int, inflight_per_worker: int,
                         repeat: int, tick: Callable[[], None], wait_s: float = BASELINE_WAIT_S) -> list[float]:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_worker, args=(endpoint,), daemon=True) for _ in range(workers)]
    names = [f"a_{i}" for i in range(n)]  # as the specs of ours, made outside the timed region
    rates = []
    try:
        for p in procs:
            p.start()
        idents = [(await _recv(sock, procs, wait_s))[0] for _ in procs]
        for _ in range(repeat):
            t0 = time.perf_counter()
            answers: list[Any] = [None] * n
            out = [0] * workers
            sent = got = 0
            turn = 0
            while got < n:
                while sent < n and out[turn] < inflight_per_worker:
                    frame = [[i, names[i], "fan-out"] for i in range(sent, min(n, sent + batch_size))]
                    await sock.send_multipart([idents[turn], orjson.dumps(frame)])
                    out[turn] += len(frame)
                    sent += len(frame)
                    turn = (turn + 1) % workers
                ident, body = await _recv(sock, procs, wait_s)
                done = orjson.loads(body)
                out[idents.index(ident)] -= len(done)
                for jid, answer in done:
                    answers[jid] = answer
                got += len(done)
            rates.append(n / (time.perf_counter() - t0))
            if answers.count("ok") != n:
                raise RuntimeError(f"minimal engine: {n - answers.count('ok')} of {n} answers missing")
            tick()
        for ident in idents:
            await sock.send_multipart([ident, _STOP])
    finally:
        for p in procs:
            reap(p)
        sock.close(0)
        ctx.term()
    return rates


def minimal_engine(n: int, workers: int, batch_size: int, repeat: int, tick: Callable[[], None],
                   inflight_per_worker: int = 8192) -> list[float]:
    """Agents/s of each of ``repeat`` runs of ``n`` zero-latency agents on the minimal engine (see the module docstring).

    Raises:
        RuntimeError: an answer did not come back, or the workers sent nothing for
            ``BASELINE_WAIT_S`` seconds.
    """
    return uvloop.run(_coordinate(n, workers, batch_size, inflight_per_worker, repeat, tick))
