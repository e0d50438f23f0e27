"""The process executor's wire format (reliability.md R27): every malformed frame is rejected with a
WireProtocolError naming the rule and the ``$.path``; valid frames round-trip."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carmulti import AgentOutput, MailboxFull, MailboxSend, MailboxTimeout, TokenAccounting, ToolError, WireProtocolError
from carmulti.executors.process import payloads as P
from carmulti.executors.process import wire as W

JOB = {"id": 1, "runner": 1, "infra": 1, "spec": {"name": "a"}, "task": "t"}
FAN = {"t": "fan", "runner": 1, "infra": 2, "ids": [7, 8], "names": ["a", "b"], "tasks": ["t", "u"]}


def frames(body, *, version=W.VERSION, blob=None):
    out = [version, orjson.dumps(body) if not isinstance(body, bytes) else body]
    if blob is not None:
        out.append(blob)
    return out


def test_valid_frames_decode():
    body, blob = W.decode(frames({"t": "jobs", "jobs": [JOB]}), W.TO_WORKER)
    assert body["jobs"][0]["spec"]["name"] == "a" and blob is None
    body, blob = W.decode(frames(FAN), W.TO_WORKER)
    assert body == FAN and blob is None
    mb = {"kind": "mailbox", "object": 4, "buffer_size": 100}
    assert W.decode(frames(dict(FAN, mailbox=mb)), W.TO_WORKER)[0]["mailbox"] == mb
    body, blob = W.decode(frames({"t": "runner", "id": 3}, blob=b"dill"), W.TO_WORKER)
    assert blob == b"dill"
    done = W.encode_done([1, 2], ["x", "y"], [0.5, 1.0])
    assert W.decode(frames(done), W.TO_COORDINATOR)[0] == done
    out = P.output_to_wire(AgentOutput("a", "x", 1, 0, 1.5, tokens=TokenAccounting(1, 2, 0.5), tools_used=["t"]))
    W.decode(frames({"t": "batch", "results": [{"id": 1, "output": out, "error": None, "duration_ms": 1.0,
                                                 "writes": [["s", "k", {"v": 1}, "w"], ["d", "k", "w"]]}]}),
             W.TO_COORDINATOR)


@pytest.mark.parametrize(
    ("msg", "path", "text"),
    [
        ([W.VERSION], "$", "expected 2 or 3 frames, got 1"),
        ([W.VERSION, b"{}", b"x", b"y"], "$", "expected 2 or 3 frames, got 4"),
        ([b"\x07", b'{"t": "ping", "n": 1}'], "$", "unknown protocol version byte"),
        ([W.VERSION, b""], "$", "empty body frame"),
        ([W.VERSION, b"{oops"], "$", "invalid JSON"),
        ([W.VERSION, b"[1, 2]"], "$", "expected object, got list"),
        ([W.VERSION, b'{"n": 1}'], "$.t", "missing required field"),
        ([W.VERSION, b'{"t": 5}'], "$.t", "expected str, got int"),
        ([W.VERSION, b'{"t": "explode"}'], "$.t", "unknown message kind 'explode'"),
        ([W.VERSION, b'{"t": "ping", "n": 1}', b"blob"], "$", "kind 'ping' takes 2 frames, got 3"),
        ([W.VERSION, b'{"t": "runner", "id": 1}'], "$", "kind 'runner' needs 3 frames"),
        ([W.VERSION, b'{"t": "ping", "n": "1"}'], "$.n", "expected int, got str"),
        (frames({"t": "jobs", "jobs": [dict(JOB, id="x")]}), "$.jobs[0].id", "expected int, got str"),
        (frames({"t": "jobs", "jobs": [JOB, dict(JOB, spec={"name": 5})]}), "$.jobs[1].spec.name",
         "expected non-empty str, got int"),
        (frames({"t": "jobs", "jobs": [dict(JOB, spec={"name": "a", "tools": ["x", 3]})]}),
         "$.jobs[0].spec.tools[1]", "expected str, got int"),
        (frames({"t": "jobs", "jobs": [dict(JOB, task=None)]}), "$.jobs[0].task", "expected str, got null"),
        (frames({"t": "jobs", "jobs": [dict(JOB, mailbox={"kind": "zzz"})]}), "$.jobs[0].mailbox.kind",
         "unknown mailbox kind"),
        (frames({"t": "jobs", "jobs": [dict(JOB, timeout_s=True)]}), "$.jobs[0].timeout_s", "expected number, got bool"),
        # the fan-out shape (a job and the coordinator's mailbox) is checked in one expression: not looser
        (frames({"t": "jobs", "jobs": [JOB, dict(JOB, mailbox={"kind": "mailbox", "object": True, "buffer_size": 1})]}),
         "$.jobs[1].mailbox.object", "expected int, got bool"),
        (frames({"t": "jobs", "jobs": [dict(JOB, mailbox={"kind": "mailbox", "object": 1})]}),
         "$.jobs[0].mailbox.buffer_size", "missing required field"),
        (frames({"t": "jobs", "jobs": [dict(JOB, mailbox=[1])]}), "$.jobs[0].mailbox", "expected object, got list"),
        (frames({"t": "jobs", "jobs": [dict(JOB, isolated="yes")]}), "$.jobs[0].isolated", "expected bool, got str"),
        (frames({"t": "jobs", "jobs": [dict(JOB, mailbox={"kind": "mailbox", "object": 1, "buffer_size": 2},
                                            spec={"name": ""})]}), "$.jobs[0].spec.name", "expected non-empty str"),
        (frames({"t": "ret", "replies": [{"rid": 1}]}), "$.replies[0]", "a reply needs 'ok' or 'err'"),
        (frames(dict(FAN, runner="1")), "$.runner", "expected int, got str"),
        (frames({k: v for k, v in FAN.items() if k != "tasks"}), "$.tasks", "missing required field"),
        (frames(dict(FAN, names=["a"])), "$", "ids, names and tasks need one entry per job, got 2, 1 and 2"),
        (frames(dict(FAN, ids=[7, True])), "$.ids[1]", "expected int, got bool"),
        (frames(dict(FAN, names=["a", ""])), "$.names[1]", "expected non-empty str, got empty str"),
        (frames(dict(FAN, names=[None, "b"])), "$.names[0]", "expected non-empty str, got null"),
        (frames(dict(FAN, tasks=["t", 5])), "$.tasks[1]", "expected str, got int"),
        (frames(dict(FAN, mailbox={"kind": "mailbox", "object": 1})), "$.mailbox.buffer_size",
         "missing required field"),
        (frames(dict(FAN, mailbox={"kind": "zzz"})), "$.mailbox.kind", "unknown mailbox kind"),
        (frames({"t": "cancel", "jobs": [1, "2"]}), "$.jobs[1]", "expected int, got str"),
    ],
)
def test_rejections_to_worker_name_the_path(msg, path, text):
    with pytest.raises(WireProtocolError) as ei:
        W.decode(msg, W.TO_WORKER)
    assert ei.value.path == path
    assert text in ei.value.msg
    assert str(ei.value).startswith(f"wire protocol error at `{path}`: ")


GOOD_OUT = ["a", "x", 1, 0, 1.0, None, None, []]


@pytest.mark.parametrize(
    ("body", "path", "text"),
    [
        ({"t": "hello", "pid": 1, "index": 0}, "$.gen", "missing required field"),
        ({"t": "batch", "results": [{"id": 1, "output": None, "error": None, "duration_ms": 1.0}]}, "$.results[0].error",
         "a result needs 'output' or 'error'"),
        ({"t": "batch", "results": [{"id": 1, "output": ["a", 5] + GOOD_OUT[2:], "error": None, "duration_ms": 1.0}]},
         "$.results[0].output[1] (answer)", "expected str, got int"),
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT[:7], "error": None, "duration_ms": 1.0}]},
         "$.results[0].output", "expected 8 fields"),
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT[:6] + [[1, 2], []], "error": None,
                                     "duration_ms": 1.0}]},
         "$.results[0].output[6] (tokens)", "expected [input_tokens, output_tokens, cost_usd]"),
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT, "error": None, "duration_ms": "1"}]},
         "$.results[0].duration_ms", "expected number, got str"),
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT, "error": None, "duration_ms": 1.0,
                                     "writes": [["x", "k"]]}]},
         "$.results[0].writes[0]", "expected [\"s\", key, value, writer]"),
        # a successful agent's common shape is checked in one expression: not looser than field by field
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT, "error": None, "duration_ms": 1.0},
                                    {"id": 2, "output": GOOD_OUT[:2] + [True] + GOOD_OUT[3:], "error": None,
                                     "duration_ms": 1.0}]},
         "$.results[1].output[2] (turns)", "expected int, got bool"),
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT[:7] + [["t", 3]], "error": None, "duration_ms": 1.0}]},
         "$.results[0].output[7][1]", "expected str, got int"),
        ({"t": "batch", "results": [{"id": True, "output": GOOD_OUT, "error": None, "duration_ms": 1.0}]},
         "$.results[0].id", "expected int, got bool"),
        ({"t": "batch", "results": [{"id": 1, "output": GOOD_OUT, "error": 5, "duration_ms": 1.0}]},
         "$.results[0].error", "expected str or null, got int"),
        ({"t": "batch", "events": [[1, [{"data": 1}]]]}, "$.events[0][1][0].kind", "missing required field"),
        ({"t": "batch", "requests": [{"rid": 1, "op": "fly"}]}, "$.requests[0].op", "unknown request op 'fly'"),
        ({"t": "batch", "requests": [{"rid": 1, "op": "tool", "job": 1, "tool": "x"}]}, "$.requests[0].params",
         "missing required field"),
        ({"t": "rpc", "rid": 1, "op": "get", "infra": 1}, "$.key", "missing required field"),
        ({"t": "batch", "done": [1]}, "$.done", "expected object, got list"),
        ({"t": "batch", "done": {"ids": [1], "answers": ["x"]}}, "$.done.durations", "missing required field"),
        ({"t": "batch", "done": {"ids": [1, 2], "answers": ["x"], "durations": [1.0]}}, "$.done",
         "ids, answers and durations need one entry per agent, got 2, 1 and 1"),
        ({"t": "batch", "done": {"ids": ["1"], "answers": ["x"], "durations": [1.0]}}, "$.done.ids[0]",
         "expected int, got str"),
        ({"t": "batch", "done": {"ids": [1], "answers": [None], "durations": [1.0]}}, "$.done.answers[0]",
         "expected str, got null"),
        ({"t": "batch", "done": {"ids": [1], "answers": ["x"], "durations": [1]}}, "$.done.durations[0]",
         "expected float, got int"),
    ],
)
def test_rejections_to_coordinator_name_the_path(body, path, text):
    with pytest.raises(WireProtocolError) as ei:
        W.decode(frames(body), W.TO_COORDINATOR)
    assert (ei.value.path, text in ei.value.msg) == (path, True), str(ei.value)


def test_the_jobs_of_a_rejected_frame_are_salvaged_from_either_kind():
    # the worker names them in its nack, and the coordinator fails exactly these
    assert W.salvage_ids(orjson.dumps(dict(FAN, names=["a", ""])), "jobs", "id") == [7, 8]
    assert W.salvage_ids(orjson.dumps(dict(FAN, ids=[7, "x", 9])), "jobs", "id") == [7, 9]
    assert W.salvage_ids(orjson.dumps(dict(FAN, ids=None)), "jobs", "id") == []
    assert W.salvage_ids(orjson.dumps({"t": "jobs", "jobs": [JOB, dict(JOB, id=2, task=None)]}), "jobs", "id") == [1, 2]
    assert W.salvage_ids(b"[1]", "jobs", "id") == [] and W.salvage_ids(b"{oops", "jobs", "id") == []
    batch = {"t": "batch", "results": [{"id": 3, "output": None}], "done": {"ids": [4, None, 5], "answers": []}}
    assert W.salvage_ids(orjson.dumps(batch), "results", "id") == [3, 4, 5]


def test_one_frame_is_the_encoding_when_it_fits_else_none():
    body = {"t": "jobs", "jobs": [JOB]}
    assert P.one_frame(body, 1000) == orjson.dumps(body)
    assert P.one_frame(body, len(orjson.dumps(body)) - 1) is None  # over the limit
    assert P.one_frame(dict(JOB, task="half \udcff"), 1000) is None  # orjson refuses a lone surrogate
    assert P.one_frame({"t": "x", "v": {1, 2}}, 1000) is None  # not JSON


def test_oversize_body_is_rejected():
    with pytest.raises(WireProtocolError, match="exceeds max_frame_bytes=10"):
        W.decode(frames({"t": "ping", "n": 123456789}), W.TO_WORKER, max_frame_bytes=10)


@pytest.mark.parametrize("output", [
    AgentOutput("a", "x", 2, 1, 1.5, tokens=TokenAccounting(1, 2, 0.5), tools_used=["t", "u"]),
    AgentOutput("a", "plain", tools_used=[]),
    AgentOutput("a\udcff", "file-\udcff", tools_used=["ok"]),
    AgentOutput("a", "x", tools_used=["t\ud800", "ok"]),
    AgentOutput("a", "", error="bad \udcff", tools_used=["\udcff"]),
    AgentOutput("a", "{\"$u\": 1}", error="plain error"),
], ids=["fields", "no-tools", "surrogate-name-answer", "surrogate-tool", "surrogate-error", "tag-lookalike"])
def test_outputs_round_trip_the_wire_with_lone_surrogates_tagged(output: AgentOutput) -> None:
    # the worker escapes what orjson refuses; the coordinator decodes the checked frame back to an equal output
    body = {"t": "batch", "results": [{"id": 7, "output": P.escape_strings(P.output_to_wire(output)),
                                       "error": None, "duration_ms": 1.0}]}
    decoded, _ = W.decode(frames(body), W.TO_COORDINATOR)
    assert P.output_from_wire(decoded["results"][0]["output"]) == output


def test_errors_round_trip():
    for exc in (MailboxSend("no agent 'x'"), MailboxFull("x", 3, 0.5), MailboxTimeout("x"), ToolError("bad")):
        back = P.decode_error(P.encode_error(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
    assert str(P.decode_error(P.encode_error(ValueError("v")))) == "v"
    assert str(P.decode_error({"type": "ZeroDivisionError", "msg": "division by zero"})) == \
        "ZeroDivisionError: division by zero"


def test_find_unserializable_names_the_path():
    assert P.find_unserializable({"a": [1, {"b": object()}]})[0] == "$.a[1].b"
    assert P.find_unserializable({"a": 1}) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["t", "id", "n", "jobs", "results", "replies",
                                                                           "spec", "name", "task", "output", "x"]),
                                                         c, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_random_frames_only_ever_raise_wire_protocol_error(msg):
    for kinds in (W.TO_WORKER, W.TO_COORDINATOR):
        try:
            W.decode(msg, kinds)
        except WireProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(set(W.TO_WORKER) | set(W.TO_COORDINATOR))), json_values)
def test_random_bodies_only_ever_raise_wire_protocol_error(kind, extra):
    body = dict(extra) if isinstance(extra, dict) else {"x": extra}
    body["t"] = kind
    for kinds in (W.TO_WORKER, W.TO_COORDINATOR):
        try:
            W.decode(frames(body), kinds)
        except WireProtocolError as exc:
            assert exc.path.startswith("$")
