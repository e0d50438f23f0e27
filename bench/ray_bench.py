"""Ray for the benchmarks: a local Ray (or a local multi-node ``Cluster``) and the Ray baselines.

* :func:`ray_up` / :func:`ray_down`: ``ray.init(address="local")`` with this
  machine's CPUs, or a ``ray.cluster_utils.Cluster`` of ``nodes`` nodes (one
  CPU each) that ``RayExecutor`` spreads its actors over. Set-up is never timed.
* :func:`ray_tasks` -- one ``@ray.remote`` task per agent (``num_cpus=1``: as
  many at once as the cluster has CPUs), ``ray.get`` of all: the way most Ray
  fan-outs are written, and what ``RayExecutor`` must beat by 20x.
* :func:`ray_actor_pool` -- ``ray.util.ActorPool`` of ``workers`` actors,
  ``map_unordered`` over the agents (one actor call per agent).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

_STATE: dict[str, Any] = {}


def _noop() -> None:
    pass


def ray_up(nodes: int = 0) -> str:
    """Start Ray for a benchmark; returns the address ``RayExecutor`` should use.

    Args:
        nodes: 0: a plain local Ray with this machine's CPUs; N > 0: a local
            ``Cluster`` of N nodes with one CPU each.
    """
    import ray

    ray_down()
    if nodes:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        _STATE["cluster"] = cluster
        return str(cluster.address)
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    return "local"


def ray_down() -> None:
    """Shut down what :func:`ray_up` started (``ray.shutdown()`` before ``cluster.shutdown()``)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster = _STATE.pop("cluster", None)
    if cluster is not None:
        cluster.shutdown()
    _STATE.pop("task", None)


def _task() -> Any:
    import ray

    task = _STATE.get("task")
    if task is None:
        def agent(i: int) -> str:  # nested: cloudpickle ships it by value, workers need not import bench
            return "ok"

        task = _STATE["task"] = ray.remote(num_cpus=1)(agent)
        ray.get([task.remote(i) for i in range(16)])  # start the workers outside the timed region
    return task


def ray_tasks(n: int, repeat: int, tick: Callable[[], None] = _noop) -> list[float]:
    """agents/s of one Ray task per agent, ``repeat`` times."""
    import ray

    task = _task()
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = ray.get([task.remote(i) for i in range(n)])
        rates.append(n / (time.perf_counter() - t0))
        assert len(out) == n and out[0] == "ok"
        tick()
    return rates


def ray_actor_pool(n: int, workers: int, repeat: int, tick: Callable[[], None] = _noop) -> list[float]:
    """agents/s of ``ray.util.ActorPool`` (``workers`` actors, one call per agent), ``repeat`` times."""
    import ray
    from ray.util import ActorPool

    class Agent:
        def run(self, i: int) -> str:
            return "ok"

    actor = ray.remote(num_cpus=0)(Agent)
    pool = ActorPool([actor.remote() for _ in range(workers)])
    list(pool.map_unordered(lambda a, i: a.run.remote(i), list(range(16))))  # actors up before timing
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = list(pool.map_unordered(lambda a, i: a.run.remote(i), list(range(n))))
        rates.append(n / (time.perf_counter() - t0))
        assert len(out) == n
        tick()
    return rates
