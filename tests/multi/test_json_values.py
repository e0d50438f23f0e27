"""Issue 8 ("trust first"): values that cross to a worker process arrive unchanged or are refused
up front, identically on both executors -- spec metadata and event data."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

import pytest

from carmulti import AgentOutput, AgentSpec, Swarm


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class MetadataProbe:
    """Answers with ``repr(spec.metadata)``: types show (tuple vs list, nan vs None)."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        return AgentOutput(spec.name, repr(spec.metadata))


# -- AgentSpec.metadata (finding 10) -------------------------------------------------------------


async def test_runners_see_equal_metadata_on_both_executors(make_infra) -> None:
    """Metadata is JSON, normalised once when the spec is built (as ``StateStore`` stores values):
    tuples are lists, enum members their values, NaN inside a container ``None`` -- on both executors,
    where a worker used to see different types than a local runner."""
    md = {"pair": (1, 2), "nested": {"t": (1, (2, "x")), "score": float("nan")}, "color": Color.RED,
          "temperature": 0.7, "big": 2**63, "flag": True, "none": None}
    spec = AgentSpec("probe", metadata=md)
    expected = {"pair": [1, 2], "nested": {"t": [1, [2, "x"]], "score": None}, "color": "red",
                "temperature": 0.7, "big": 2**63, "flag": True, "none": None}
    infra = make_infra()
    res = await Swarm([spec, spec.with_name("clone"), spec.with_metadata("extra", ("a",))]).run(
        "t", MetadataProbe(), infra)
    assert [o.answer for o in res.outputs] == [repr(expected), repr(expected), repr({**expected, "extra": ["a"]})]
    assert spec.metadata == expected


@pytest.mark.parametrize("metadata, path, what", [
    ({"when": datetime.date(2024, 1, 2)}, "['when']", "date"),
    ({"run": {"at": [datetime.datetime(2024, 1, 2)]}}, "['run']['at'][0]", "datetime"),
    ({"p": Point(1, 2)}, "['p']", "Point"),
    ({"temperature": float("nan")}, "['temperature']", "non-finite float nan"),
    ({"limit": float("inf")}, "['limit']", "non-finite float inf"),
    ({"n": 2**64}, "['n']", "integer 18446744073709551616 exceeds the 64-bit range"),
    ({"ns": [1, -(2**70)]}, "['ns'][1]", "exceeds the 64-bit range"),
    ({1: "x"}, "", "key 1 (int) is not a str"),
    ({"a": {("k",): 1}}, "['a']", "key ('k',) (tuple) is not a str"),
    ({"tags": {"x", "y"}}, "['tags']", "set"),
    ({"raw": b"bytes"}, "['raw']", "bytes"),
    ({"obj": object()}, "['obj']", "object"),
])
def test_metadata_that_is_not_json_is_refused_when_the_spec_is_built(metadata, path, what) -> None:
    prefix = f"AgentSpec('a').metadata{path}"
    with pytest.raises(TypeError, match=fr"^{re_escape(prefix)} is not JSON-serializable: .*{re_escape(what)}"):
        AgentSpec("a", metadata=metadata)
    with pytest.raises(TypeError, match=re_escape(prefix)):
        AgentSpec.from_dict({"name": "a", "metadata": metadata})
    ((key, value),) = metadata.items() if len(metadata) == 1 else (None, None)
    if isinstance(key, str):
        with pytest.raises(TypeError, match=re_escape(prefix)):
            AgentSpec("a").with_metadata(key, value)


def test_metadata_errors_say_how_to_fix() -> None:
    with pytest.raises(TypeError, match=r"\.isoformat\(\)"):
        AgentSpec("a", metadata={"when": datetime.date(2024, 1, 2)})
    with pytest.raises(TypeError, match=r"dataclasses\.asdict"):
        AgentSpec("a", metadata={"p": Point(1, 2)})
    with pytest.raises(TypeError, match="AgentSpec\\('a'\\)\\.metadata must be a dict with str keys, got list"):
        AgentSpec("a", metadata=[("k", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="with_metadata key must be a str, got int"):
        AgentSpec("a").with_metadata(1, "x")  # type: ignore[arg-type]


def test_metadata_builders_validate_only_what_they_add_and_copy() -> None:
    s = AgentSpec("a", metadata={"k": (1,)})
    t = s.with_metadata("when", "2024-01-02").with_metadata("k", (2, 3))
    assert t.metadata == {"k": [2, 3], "when": "2024-01-02"} and s.metadata == {"k": [1]}
    u = t.with_name("b")
    assert u.metadata == t.metadata and u.metadata is not t.metadata
    assert AgentSpec.from_dict(t.to_dict()) == t


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


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
        cid = ex._shipped.coordination_entry(infra).cid  # what a job's frame names its infra by
        worker = types.SimpleNamespace(pid=4242, inflight={})
        batch = [{"kind": "fine", "data": 1}, {"kind": "score", "data": float("nan")}]
        ex._on_batch(worker, {"events": [[cid, batch]]})
        assert len(infra.log) == 0
        assert ex.rejected_frames == 1
        assert "events from worker 4242 rejected: event data for kind 'score'" in caplog.text
    finally:
        await infra.aclose()
