"""Issue 8 ("trust first"): values that cross to a worker process arrive unchanged or are refused
up front, identically on both executors -- spec metadata and event data."""

from __future__ import annotations

from typing import Any

from carmulti import AgentOutput, AgentSpec, Swarm


class EventProbe:
    """Appends ``spec.metadata["data"]`` (a float named by ``"float"``) as event data and answers
    ``"stored"`` or the ``TypeError`` text."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        try:
            runtime.log.append("probe", float(spec.metadata["float"]), agent=spec.name)
        except TypeError as exc:
            return AgentOutput(spec.name, f"refused: {exc}")
        return AgentOutput(spec.name, "stored")


async def test_non_finite_event_data_is_refused_by_a_runner_on_both_executors(make_infra) -> None:
    """Finding 11c: NaN/inf event data used to become ``null`` (locally in carcore, and in the
    worker's event buffer); now both refuse it at ``append`` and the log holds no such event."""
    infra = make_infra()
    specs = [AgentSpec(name, metadata={"float": v}) for name, v in
             (("n", "nan"), ("p", "inf"), ("m", "-inf"), ("ok", "0.5"))]
    res = await Swarm(specs).run("t", EventProbe(), infra)
    answers = [o.answer for o in res.outputs]
    for name, text, a in zip("npm", ("nan", "inf", "-inf"), answers):
        assert a == (f"refused: event data for kind 'probe' is not JSON-serializable: non-finite float {text} "
                     f"has no JSON representation (log None or a string such as '{text}' instead)"), name
    assert answers[3] == "stored"
    assert [(e.agent, e.data) for e in infra.log.filter(kind="probe")] == [("ok", 0.5)]


async def test_a_worker_batch_with_non_finite_event_data_is_rejected_whole_not_a_crash(caplog) -> None:
    """The coordinator appends a worker's events with ``EventLog.append_batch``; a record it now
    refuses (TypeError) makes the batch a rejected frame (all or nothing), as any bad record."""
    import types

    from carmulti import ProcessExecutor, SharedInfra

    ex = ProcessExecutor(workers=1)  # never started: only its frame handling is exercised
    infra = SharedInfra(executor=ex)
    try:
        cid = ex._infra_entry(infra).cid  # what a job's frame names its infra by
        worker = types.SimpleNamespace(pid=4242, inflight={})
        batch = [{"kind": "fine", "data": 1}, {"kind": "score", "data": float("nan")}]
        ex._on_batch(worker, {"ev": [[cid, batch]]})
        assert len(infra.log) == 0
        assert ex.rejected_frames == 1
        assert "events from worker 4242 rejected: event data for kind 'score'" in caplog.text
    finally:
        await infra.aclose()
