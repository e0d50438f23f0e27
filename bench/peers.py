"""Peer frameworks as fan-out baselines (``--peers``): LangGraph ``Send`` and Ray tasks.

Each peer runs the same zero-latency workload as ``bench fanout``: N "agents",
each a call that answers ``f"agent {i} done"`` at once, fanned out together and
collected; the function returns agents/s for one run (the caller warms up,
repeats and takes the median). Setup that a user pays once per process --
compiling the LangGraph graph, ``ray.init`` and starting Ray's workers -- is
kept out of the timed region; ``ray.init``'s own cost is recorded in
``RAY_TIMINGS`` so a report can quote it.

* ``langgraph_send_fanout(n)`` (a coroutine: it runs ``graph.ainvoke`` on the
  caller's event loop): ``START -> [Send("agent", {"i": i}) for i in range(n)]``
  from a conditional edge (LangGraph's map-reduce pattern), an async ``agent``
  node appending its answer to an ``Annotated[list, operator.add]`` channel.
  All N sends run in one superstep, so the recursion limit (supersteps, default
  25) is not a function of N; ``max_concurrency`` is left unset (unbounded).
  ``langgraph_send_fanout_sync(n)`` runs it on a fresh uvloop loop.
* ``ray_tasks_fanout(n)``: ``ray.init(num_cpus=2)`` once per process (lazy;
  ``shutdown_ray()`` stops it), one ``@ray.remote`` task per agent, ``ray.get``
  of all N refs.

Both need the ``bench-peers`` extra: ``pip install 'carmulti[bench-peers]'``
(from a checkout: ``pip install '.[bench-peers]'``).
"""

from __future__ import annotations

import atexit
import operator
import os
import shutil
import tempfile
import time
from typing import Annotated, Any, Callable, TypedDict

EXTRA_HINT = "pip install 'carmulti[bench-peers]'"

#: How long setting Ray up took in this process (seconds), filled by the first ``ray_tasks_fanout``:
#: ``import`` (import ray), ``init`` (ray.init), ``workers`` (first round of tasks, which starts
#: the worker processes). None of it is in the agents/s figure.
RAY_TIMINGS: dict[str, float] = {}

RAY_NUM_CPUS = 2
#: Ray's shared-memory object store. The answers are tiny and travel inline, so the store is
#: barely used; a fixed size keeps Ray from reserving 30% of the machine's memory.
RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def _answer(i: int) -> str:
    return f"agent {i} done"


def _check(answers: list[Any], n: int, who: str) -> None:
    """Every agent answered exactly once (order is free: LangGraph's reducer need not keep it)."""
    if len(answers) != n:
        raise RuntimeError(f"{who}: expected {n} answers, got {len(answers)}")
    if set(answers) != {_answer(i) for i in range(n)}:
        raise RuntimeError(f"{who}: wrong answers, e.g. {sorted(set(answers) - {_answer(i) for i in range(n)})[:3]}")


# --------------------------------------------------------------------------- LangGraph


def _import_langgraph() -> tuple[Any, Any, Any, Any]:
    try:
        from langgraph.graph import END, START, StateGraph
        from langgraph.types import Send
    except ImportError as e:
        raise ImportError(f"the LangGraph peer needs langgraph (the bench-peers extra): {EXTRA_HINT}  [{e}]") from e
    return StateGraph, Send, START, END


class FanoutState(TypedDict):
    """The graph's state: N in, the answers out (``operator.add`` concatenates each agent's list)."""

    n: int
    answers: Annotated[list[str], operator.add]


class AgentState(TypedDict):
    """What one ``Send`` hands to the ``agent`` node."""

    i: int


_GRAPH: Any = None


def langgraph_graph() -> Any:
    """The compiled fan-out graph (compiled once per process; N is part of the input)."""
    global _GRAPH
    StateGraph, Send, START, END = _import_langgraph()
    if _GRAPH is not None:
        return _GRAPH

    def fan_out(state: FanoutState) -> list[Any]:
        return [Send("agent", {"i": i}) for i in range(state["n"])]

    async def agent(state: AgentState) -> dict[str, list[str]]:
        return {"answers": [_answer(state["i"])]}

    g = StateGraph(FanoutState)
    g.add_node("agent", agent)
    g.add_conditional_edges(START, fan_out, ["agent"])
    g.add_edge("agent", END)
    _GRAPH = g.compile()
    return _GRAPH


async def langgraph_send_fanout(n: int) -> float:
    """One LangGraph ``Send`` fan-out of ``n`` agents on the running loop; returns agents/s."""
    graph = langgraph_graph()  # imports each call, so a missing extra always raises ImportError
    t0 = time.perf_counter()
    out = await graph.ainvoke({"n": n, "answers": []})
    dt = time.perf_counter() - t0
    _check(out["answers"], n, "LangGraph Send")
    return n / dt


def langgraph_send_fanout_sync(n: int) -> float:
    """``langgraph_send_fanout`` on a fresh uvloop loop (for callers without a running loop)."""
    import uvloop

    return uvloop.run(langgraph_send_fanout(n))


# --------------------------------------------------------------------------- Ray

_RAY: dict[str, Any] = {}  # "task" (the remote function), "temp_dir"


def _import_ray() -> Any:
    # Offline sandbox / CI: no usage-stats upload. And a single-node Ray on loopback: with
    # "cluster" mode off, Ray takes 127.0.0.1 as the node address instead of probing for the
    # machine's routable one (it would otherwise turn even _node_ip_address="127.0.0.1" into it).
    # Both are read when ray is imported.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    t0 = time.perf_counter()
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"the Ray peer needs ray (the bench-peers extra): {EXTRA_HINT}  [{e}]") from e
    RAY_TIMINGS.setdefault("import", time.perf_counter() - t0)
    return ray


def _ensure_ray() -> Any:
    """``ray.init`` once (timed into ``RAY_TIMINGS``) and start the workers; returns the remote task."""
    ray = _import_ray()
    if "task" in _RAY and ray.is_initialized():
        return _RAY["task"]
    import logging

    # Short path: Ray puts unix sockets under it (108-byte limit). CARMULTI_RAY_TEMP_DIR overrides
    # (the tests use it to find any Ray process left behind).
    temp_dir = os.environ.get("CARMULTI_RAY_TEMP_DIR") or tempfile.mkdtemp(prefix="carmulti-ray-", dir="/tmp")
    os.makedirs(temp_dir, exist_ok=True)
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        try:  # ray was imported before the env var was set: same switch, on the module
            import ray._private.ray_constants as rc

            rc.ENABLE_RAY_CLUSTER = False
        except (ImportError, AttributeError):  # pragma: no cover - other Ray versions
            pass
    before = _descendants()
    t0 = time.perf_counter()
    ray.init(
        num_cpus=RAY_NUM_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        object_store_memory=RAY_OBJECT_STORE_BYTES,
        ignore_reinit_error=True,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",  # loopback only
    )
    RAY_TIMINGS["init"] = time.perf_counter() - t0

    def agent(i: int) -> str:  # nested: cloudpickle ships it by value, workers need not import bench
        return f"agent {i} done"

    task = ray.remote(num_cpus=1)(agent)
    # Start the worker processes (Ray starts them lazily) outside the measured region.
    t0 = time.perf_counter()
    ray.get([task.remote(i) for i in range(8 * RAY_NUM_CPUS)])
    RAY_TIMINGS["workers"] = time.perf_counter() - t0
    if not _RAY.get("atexit"):
        atexit.register(shutdown_ray)
    _RAY.update(task=task, temp_dir=temp_dir, own_temp=not os.environ.get("CARMULTI_RAY_TEMP_DIR"),
                pids=_descendants() - before, atexit=True)
    return task


def ray_tasks_fanout(n: int) -> float:
    """One task per agent on a local Ray (``num_cpus=2``), ``ray.get`` of all; returns agents/s.

    The first call in a process starts Ray (see ``RAY_TIMINGS``); that is not timed.
    """
    task = _ensure_ray()
    ray = _import_ray()
    t0 = time.perf_counter()
    answers = ray.get([task.remote(i) for i in range(n)])
    dt = time.perf_counter() - t0
    _check(answers, n, "Ray tasks")
    return n / dt


def shutdown_ray(wait: float = 30.0) -> None:
    """Stop the Ray this module started (no-op otherwise) and wait up to ``wait`` s for its processes."""
    if "task" not in _RAY:
        return
    import ray

    temp_dir = _RAY["temp_dir"]
    ours = _RAY["pids"] | _descendants(mentioning=temp_dir)
    ray.shutdown()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and (_descendants() & ours or _descendants(mentioning=temp_dir)):
        time.sleep(0.05)
    if _RAY.get("own_temp"):
        shutil.rmtree(temp_dir, ignore_errors=True)
    for k in ("task", "temp_dir", "own_temp", "pids"):
        _RAY.pop(k, None)


def _descendants(mentioning: str | None = None) -> set[int]:
    """Live descendant pids (with ``mentioning``: only Ray's, whose command line names that
    temp dir or is a ``ray::`` worker). Empty without psutil: shutdown then does not wait."""
    try:
        import psutil
    except ImportError:
        return set()
    out: set[int] = set()
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return out
    for p in kids:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if mentioning is not None:
                cmd = " ".join(p.cmdline())
                if mentioning not in cmd and not cmd.startswith("ray::"):
                    continue
        except psutil.Error:
            continue
        out.add(p.pid)
    return out


# --------------------------------------------------------------------------- discovery

PEERS: dict[str, tuple[str, Callable[..., Any]]] = {
    # system name (as in plots and tables) -> (module that must import, function)
    "LangGraph Send": ("langgraph", langgraph_send_fanout),
    "Ray tasks": ("ray", ray_tasks_fanout),
}


def available() -> dict[str, str | None]:
    """``{system: None}`` if its library imports, else ``{system: why not + how to install}``."""
    out: dict[str, str | None] = {}
    for system, (mod, _fn) in PEERS.items():
        try:
            if mod == "langgraph":
                _import_langgraph()
            else:
                _import_ray()
            out[system] = None
        except ImportError as e:
            out[system] = str(e)
        except Exception as e:  # a broken install: say so, do not crash the bench
            out[system] = f"{mod} failed to import ({type(e).__name__}: {e}); reinstall with {EXTRA_HINT}"
    return out
