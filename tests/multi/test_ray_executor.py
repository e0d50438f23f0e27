"""RayExecutor on a three-node cluster on one machine (the session ``ray_cluster`` fixture): agents
spread over nodes, the budget cap across nodes, faults (a killed actor, a removed node), timeouts,
cancellation, and nothing left behind. Every pattern test also runs on ``ray`` (``make_infra``)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from carmulti import AgentSpec, BudgetError, BudgetLimits, RayExecutor, SharedInfra, Swarm
from carmulti.executors import AgentJob

HANG_BOUND_S = 90


class NodeRunner:
    """Answers with the Ray node it ran on; ``metadata``: ``sleep`` seconds, ``pidfile`` (write the pid first),
    ``reserve`` (call ``runtime.budget.begin_agent()`` that many times, answer with the successes)."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        import ray

        md = spec.metadata
        if "pidfile" in md:
            pathlib.Path(md["pidfile"]).write_text(str(os.getpid()))
        if "reserve" in md:
            ok = 0
            for _ in range(md["reserve"]):
                try:
                    runtime.budget.begin_agent()
                    ok += 1
                except BudgetError:
                    pass
                await asyncio.sleep(0)
            return str(ok)
        await asyncio.sleep(float(md.get("sleep", 0)))
        return ray.get_runtime_context().get_node_id()


def _alive_hosts() -> list[dict[str, Any]]:
    from ray._private import state

    return [a for a in state.actors().values() if a.get("ActorClassName", "").endswith("AgentHost")
            and a.get("State") == "ALIVE"]


async def test_agents_run_on_every_node(ray_cluster):
    ex = RayExecutor(address=ray_cluster.address)
    async with SharedInfra(executor=ex) as infra:
        assert ex.workers == 3  # one actor per alive node by default
        res = await asyncio.wait_for(Swarm([AgentSpec(f"a{i}") for i in range(12)]).run("t", NodeRunner(), infra),
                                     HANG_BOUND_S)
    nodes = {o.answer for o in res.outputs}
    assert all(o.succeeded for o in res.outputs)
    assert len(nodes) >= 2, nodes  # agents really ran on at least two distinct nodes


async def test_the_budget_cap_holds_exactly_across_nodes(ray_cluster):
    """Agents on every node hammer begin_agent() on the coordination's budget: never above the cap."""
    cap = 40
    ex = RayExecutor(address=ray_cluster.address)
    async with SharedInfra(executor=ex, budget=BudgetLimits(max_agents=cap)) as infra:
        agents = [AgentSpec(f"h{i}", metadata={"reserve": 25}) for i in range(6)]
        res = await asyncio.wait_for(Swarm(agents).run("t", NodeRunner(), infra), HANG_BOUND_S)
        admitted_by_runners = sum(int(o.answer) for o in res.outputs)
        assert all(o.succeeded for o in res.outputs)
        assert infra.budget.snapshot().agents_started == cap  # 6 agents + 150 attempts: exactly the cap
        assert admitted_by_runners == cap - 6


async def test_an_actor_killed_mid_agent_fails_its_agents_reruns_idempotent_ones_and_is_replaced(ray_cluster,
                                                                                                  tmp_path):
    import ray

    ex = RayExecutor(address=ray_cluster.address, workers=2)
    async with SharedInfra(executor=ex) as infra:
        pidfile = tmp_path / "victim.pid"
        agents = [AgentSpec("victim", metadata={"sleep": 30, "pidfile": str(pidfile)}),
                  AgentSpec("steady", metadata={"sleep": 0.5})]
        task = asyncio.ensure_future(Swarm(agents).run("t", NodeRunner(), infra))
        for _ in range(1000):
            if pidfile.exists() and pidfile.read_text():
                break
            await asyncio.sleep(0.01)
        pid = int(pidfile.read_text())
        victim = next(w for w in ex._workers.slots if w is not None and w.pid == pid)
        ray.kill(victim.proc.actor, no_restart=True)
        res = await asyncio.wait_for(task, HANG_BOUND_S)
        err = res.outputs[0].error
        assert err is not None and err.startswith(f"worker {pid} (Ray actor ") and " on node " in err, err
        assert "killed with ray.kill" in err and err.endswith("while running this agent")
        assert ex.restarts == 1
        for _ in range(500):  # the replacement actor connects
            if len(ex.pids) == 2 and pid not in ex.pids:
                break
            await asyncio.sleep(0.02)
        assert len(ex.pids) == 2 and pid not in ex.pids
        again = await asyncio.wait_for(
            Swarm([AgentSpec(f"b{i}") for i in range(4)]).run("t", NodeRunner(), infra), HANG_BOUND_S)
        assert all(o.succeeded for o in again.outputs)


async def test_an_idempotent_agent_runs_again_on_another_actor(ray_cluster, tmp_path):
    import ray

    ex = RayExecutor(address=ray_cluster.address, workers=2)
    async with SharedInfra(executor=ex) as infra:
        pidfile = tmp_path / "victim.pid"
        spec = AgentSpec("safe", metadata={"sleep": 5, "pidfile": str(pidfile), "idempotent": True})
        task = asyncio.ensure_future(ex.run_agent(NodeRunner(), AgentJob(spec, "t"), infra))
        for _ in range(1000):
            if pidfile.exists() and pidfile.read_text():
                break
            await asyncio.sleep(0.01)
        first = int(pidfile.read_text())
        pidfile.write_text("")
        victim = next(w for w in ex._workers.slots if w is not None and w.pid == first)
        ray.kill(victim.proc.actor, no_restart=True)
        run = await asyncio.wait_for(task, HANG_BOUND_S)
        assert run.ok, run.error
        assert int(pidfile.read_text()) != first  # ran again, in another actor


async def test_a_removed_node_accounts_for_every_agent(ray_cluster):
    """A node removed mid-run: every agent has an answer or an error; nothing hangs past Ray's detection."""
    node = ray_cluster.add_node(num_cpus=1, resources={"extra": 1})
    ray_cluster.wait_for_nodes()
    ex = RayExecutor(address=ray_cluster.address)
    try:
        async with SharedInfra(executor=ex) as infra:
            assert ex.workers == 4
            agents = [AgentSpec(f"s{i}", metadata={"sleep": 4}) for i in range(8)]
            agents += [AgentSpec(f"i{i}", metadata={"sleep": 4, "idempotent": True}) for i in range(4)]
            task = asyncio.ensure_future(Swarm(agents).run("t", NodeRunner(), infra))
            await asyncio.sleep(1.5)
            t0 = time.monotonic()
            ray_cluster.remove_node(node)
            node = None
            res = await asyncio.wait_for(task, HANG_BOUND_S)
            assert time.monotonic() - t0 < 60
        assert len(res.outputs) == 12
        lost = [o for o in res.outputs if not o.succeeded]
        for o in lost:
            assert " on node " in o.error and "died" in o.error, o.error
        assert all(o.succeeded for o in res.outputs[8:])  # idempotent agents ran again elsewhere
    finally:
        if node is not None:
            ray_cluster.remove_node(node)


async def test_agent_timeout_cancels_on_the_actor(ray_cluster):
    ex = RayExecutor(address=ray_cluster.address, workers=1)
    async with SharedInfra(executor=ex, agent_timeout_s=0.5) as infra:
        t0 = time.monotonic()
        res = await asyncio.wait_for(
            Swarm([AgentSpec("slow", metadata={"sleep": 60}), AgentSpec("fast")]).run("t", NodeRunner(), infra),
            HANG_BOUND_S)
        assert time.monotonic() - t0 < 30
        assert res.outputs[0].error == "timeout after 0.5s"
        assert res.outputs[1].succeeded
        stats = await ex._workers.slots[0].proc.actor.stats.remote()
        assert stats["jobs"] == 0  # the timed-out runner was cancelled on the actor


async def test_cancelling_the_caller_cancels_every_agent_in_flight(ray_cluster):
    ex = RayExecutor(address=ray_cluster.address, workers=2)
    async with SharedInfra(executor=ex) as infra:
        task = asyncio.ensure_future(
            Swarm([AgentSpec(f"z{i}", metadata={"sleep": 60}) for i in range(6)]).run("t", NodeRunner(), infra))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(300):
            jobs = [(await w.proc.actor.stats.remote())["jobs"] for w in ex._workers.slots if w is not None]
            if sum(jobs) == 0:
                break
            await asyncio.sleep(0.05)
        assert sum(jobs) == 0


async def test_aclose_leaves_no_actor_and_keeps_a_ray_it_did_not_start(ray_cluster):
    import ray

    ex = RayExecutor()  # address=None: the Ray this process already initialised
    async with SharedInfra(executor=ex) as infra:
        await Swarm([AgentSpec("a")]).run("t", NodeRunner(), infra)
        assert len(_alive_hosts()) == ex.workers
    for _ in range(200):
        if not _alive_hosts():
            break
        await asyncio.sleep(0.05)
    assert _alive_hosts() == []
    assert ray.is_initialized()  # not ours to shut down


LOCAL_RAY = '''
import carmulti, ray
from carmulti import AgentSpec, RayExecutor, SharedInfra, Swarm

class R:
    async def run(self, spec, task, runtime, mailbox):
        return f"{spec.name} ok"

async def main():
    ex = RayExecutor(workers=1, init_kwargs={"num_cpus": 1, "include_dashboard": False})
    async with SharedInfra(executor=ex) as infra:
        res = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("t", R(), infra)
        print([o.answer for o in res.outputs], ex.started_ray, flush=True)
    print(ray.is_initialized(), flush=True)

if __name__ == "__main__":
    carmulti.run(main())
'''


def test_without_a_ray_it_starts_a_local_one_and_shuts_it_down(tmp_path):
    script = tmp_path / "local_ray.py"
    script.write_text(textwrap.dedent(LOCAL_RAY))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["['a ok', 'b ok'] True", "False"]
