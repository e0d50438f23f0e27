"""The process executor's column-by-column frames: ``fan`` (jobs) and a batch's ``done`` (common
successes). Which jobs and outputs take them, and that the others, a frame orjson refuses, one over
the frame limit and a malformed one behave as with ``jobs`` frames and ``results``."""

from __future__ import annotations

import os
from typing import Any

import orjson

from carmulti import AgentOutput, AgentSpec, MapReduce, ProcessExecutor, SharedInfra, Swarm, TokenAccounting
from carmulti.executors.process import wire as W


class SpecEcho:
    """Answers with what reached the worker: the spec's name and system prompt, and the task."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        assert mailbox is not None
        return f"{spec.name}|{spec.system_prompt}|{task}|{os.getpid()}"


def _record_kinds(ex: ProcessExecutor) -> list[tuple[str, int]]:
    """(kind, number of jobs) of every jobs-carrying frame the coordinator sends from now on."""
    kinds: list[tuple[str, int]] = []
    transport = ex._jobs.transport
    send = transport.send

    def spy(w: Any, frames: list[bytes]) -> None:
        body = orjson.loads(frames[1])
        if body["t"] == "fan":
            kinds.append(("fan", len(body["ids"])))
        elif body["t"] == "jobs":
            kinds.append(("jobs", len(body["jobs"])))
        send(w, frames)

    transport.send = spy  # type: ignore[method-assign]
    return kinds


async def test_plain_jobs_travel_as_fan_frames_and_the_others_as_jobs_frames():
    specs = [AgentSpec("a"), AgentSpec("b"), AgentSpec("p", system_prompt="careful"), AgentSpec("c")]
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        await infra.start()
        kinds = _record_kinds(ex)
        res = await Swarm(specs).run("t", SpecEcho(), infra)
        answers = [o.answer.rsplit("|", 1)[0] for o in res.outputs]
        assert answers == ["a||t", "b||t", "p|careful|t", "c||t"]
        assert kinds[:3] == [("fan", 2), ("jobs", 1), ("fan", 1)]
        assert infra.state.get("agent.p.answer").startswith("p|careful|t|")
    ex2 = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex2, agent_timeout_s=30.0) as infra:  # a timeout travels in the job
        await infra.start()
        kinds = _record_kinds(ex2)
        res = await Swarm(specs[:2]).run("t", SpecEcho(), infra)
        assert [o.answer.rsplit("|", 1)[0] for o in res.outputs] == ["a||t", "b||t"]
        assert kinds[0] == ("jobs", 2)


async def test_a_task_orjson_refuses_fails_only_its_agent():
    # the fan frame of the run is refused: its jobs go as jobs frames, and only the one that cannot go fails
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        await infra.start()
        kinds = _record_kinds(ex)
        res = await MapReduce(AgentSpec("m"), AgentSpec("r"), max_concurrent=10).run(
            "t", ["x", "bad \ud800", "y"], SpecEcho(), infra)
        outs = res.map_outputs
        assert [o.succeeded for o in outs] == [True, False, True]
        assert outs[1].error.startswith("could not send agent 'm_1' to a worker: $.task: ")
        assert outs[0].answer.startswith("m_0||") and outs[2].answer.startswith("m_2||")
        assert ("fan", 3) not in kinds and ("jobs", 2) in kinds


async def test_a_malformed_fan_frame_is_rejected_and_the_worker_keeps_serving():
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        await infra.start()
        pids = ex.pids
        bad = {"t": "fan", "runner": 1, "infra": 1, "ids": [900001, 900002], "names": ["a", ""], "tasks": ["t", "t"]}
        ex._send_raw(0, [W.VERSION, orjson.dumps(bad)])
        ex._send_raw(0, [W.VERSION, orjson.dumps(dict(bad, names=["a"]))])
        assert await ex._ping(0) == 2
        res = await Swarm([AgentSpec("s1"), AgentSpec("s2")]).run("t", SpecEcho(), infra)
        assert all(o.succeeded for o in res.outputs) and ex.pids == pids


class Outputs:
    """Output by agent name: a common success, a renamed one, one with spend, one of several turns, a
    failure the runner reports itself, an answer with a lone surrogate, and one with a state write."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        name = spec.name
        if name == "renamed":
            return AgentOutput("other", "r")
        if name == "spent":
            return AgentOutput(name, "s", tokens=TokenAccounting(3, 4, 0.5))
        if name == "turns":
            return AgentOutput(name, "t", turns=3)
        if name == "own-error":
            return AgentOutput(name, "", error="gave up")
        if name == "surrogate":
            return "half \udcff"
        if name == "writer":
            runtime.state.set("written", 1)
            return "w"
        return f"{name} ok"


def _record_results(ex: ProcessExecutor) -> list[str]:
    """The form of every result the coordinator receives from now on: "done" or "results"."""
    forms: list[str] = []
    on_batch = ex._on_batch

    def spy(w: Any, body: dict[str, Any]) -> None:
        forms.extend(["done"] * len(body.get("done", {}).get("ids", ())) + ["results"] * len(body.get("results", ())))
        on_batch(w, body)

    ex._on_batch = spy  # type: ignore[method-assign]
    return forms


async def test_only_common_successes_travel_as_done_columns_and_every_output_arrives_whole():
    names = ["a", "renamed", "spent", "turns", "own-error", "writer", "b"]
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        await infra.start()
        forms = _record_results(ex)
        res = await Swarm([AgentSpec(n) for n in names]).run("t", Outputs(), infra)
        by = dict(zip(names, res.outputs))
        assert by["a"].answer == "a ok" and by["b"].answer == "b ok"
        assert by["a"].turns == 1 and by["a"].tool_calls == 0 and by["a"].tools_used == [] and by["a"].tokens is None
        assert by["a"].tools_used is not by["b"].tools_used  # a list of its own
        assert by["renamed"].name == "other" and infra.state.get("agent.other.answer") == "r"
        assert by["spent"].tokens == TokenAccounting(3, 4, 0.5) and by["turns"].turns == 3
        assert by["own-error"].error == "gave up" and not by["own-error"].succeeded
        assert infra.state.get("written") == 1 and by["writer"].answer == "w"
        assert sorted(forms) == ["done"] * 2 + ["results"] * 5
        assert infra.budget.snapshot().total_tokens == 7
        # an answer orjson refuses: the done columns it was in go as results (which tag the lone surrogate)
        forms.clear()
        res = await Swarm([AgentSpec("surrogate"), AgentSpec("c")]).run("t", Outputs(), infra)
        assert [o.answer for o in res.outputs] == ["half \udcff", "c ok"] and forms == ["results"] * 2


async def test_isolated_common_successes_are_published_through_their_overlay():
    ex = ProcessExecutor(workers=1)
    async with SharedInfra(executor=ex) as infra:
        await infra.start()
        forms = _record_results(ex)
        res = await Swarm([AgentSpec("i1"), AgentSpec("i2")]).with_isolation().run("t", Outputs(), infra)
        assert [o.answer for o in res.outputs] == ["i1 ok", "i2 ok"] and forms == ["done", "done"]
        assert infra.state.get("agent.i1.answer") == "i1 ok"
