"""The wire format between the :class:`~carmulti.ProcessExecutor` coordinator and its workers.

Owns every frame kind: how it is built (``encode_*``) and how it is checked and
read (:func:`decode` with the validators below), side by side. Payload codecs
shared by several kinds (outputs, state writes, tagged values, errors, sizes)
are in :mod:`.payloads`, the checks of the items frames carry (jobs, outputs,
results, requests) in :mod:`._items`, the field checks both are made of in
:mod:`._fields`.

Every ZeroMQ message is a multipart message of **two or three frames**::

    [version: 1 byte = b"\\x01"] [body: orjson object with "t" = kind] [blob: bytes]?

(on the coordinator's ROUTER socket the peer identity frame comes first and is
stripped before :func:`decode`). Only ``runner`` and ``infra`` carry a third
frame (a dill pickle). Many jobs, results, events and requests travel in one
frame: senders flush once per event-loop iteration, in frames of at most
``max_frame_bytes`` (:func:`~.payloads.pack_frames`).

Kinds, coordinator → worker:

* ``runner``  ``{"t", "id"}`` + blob: a runner, cached by ``id`` in the worker.
* ``infra``   ``{"t", "id"}`` + blob: ``(budget, policies)`` of one coordination.
* ``jobs``    ``{"t", "jobs": [job]}``; job = ``{"id", "runner", "infra", "spec":
  {"name", ...AgentSpec fields that differ from the defaults}, "task", "isolated"?,
  "tools"?: {name: schema|null}, "spec_tools"?: false, "validate_tools"?: false,
  "tool_executor"?: true, "timeout_s"?, "mailbox"?: {"kind": "mailbox", "object",
  "buffer_size"} | {"kind": "pool", "agent_id", "inbox", "router", "capacity"},
  "trace"?: {"traceparent": str, ...}}`` (``trace``: the coordinator's trace context, the
  parent of the agent's span; see :mod:`carmulti.tracing`).
* ``fan``     ``{"t", "runner", "infra", "ids": [id], "names": [str], "tasks": [str], "mailbox"?}``:
  jobs of one runner and coordination with every optional field at its default and a spec of
  only its name (a big fan-out's), column by column (:func:`encode_fan`); job ``i`` is
  ``{"id": ids[i], "runner", "infra", "spec": {"name": names[i]}, "task": tasks[i], "mailbox"?}``.
* ``ret``     ``{"t", "replies": [{"rid", "ok": value} | {"rid", "err": error}]}``.
* ``rret``    ``{"t", "rid", "ok" | "err"}``: the reply to one synchronous ``rpc``.
* ``cancel``  ``{"t", "jobs": [id]}``: the caller cancelled these jobs.
* ``ping``    ``{"t", "n", "jobs"?: [id]}`` (``jobs``: which of these does the worker
  still run or owe a result for?);  ``stop`` ``{"t"}``.
* ``forget``  ``{"t", "runners"?: [id], "infras"?: [id]}``: cached runners / infras no
  coordination needs any more (an infra is released when its last running job ends).
* ``put``     ``{"t", "rid", "hid", "msg", "timeout_s"}``: put ``msg`` in the inbox this worker hosts as
  ``hid`` (answered by ``putr``); ``pcancel`` ``{"t", "rid"}``; ``hclose`` ``{"t", "hids": [id]}``: close
  and drop hosted inboxes; ``lost`` ``{"t", "worker", "reason"}``: a peer worker died. ``put``,
  ``pcancel`` and ``putr`` also travel worker to worker on the peer connections, either way
  (:mod:`.peers`), after ``phello`` ``{"t", "worker"}``: the identity of the worker that connected.

Kinds, worker → coordinator:

* ``hello``   ``{"t", "pid", "index", "gen", "nonce"}`` (the nonce the supervisor gave this spawn).
* ``batch``   ``{"t", "events"?: [[infra, [event]]], "requests"?: [request],
  "results"?: [result]}``; result = ``{"id", "output": output | null, "error": str |
  null, "duration_ms", "writes"?: [write]}``; output: see :func:`~.payloads.output_to_wire`;
  write = ``["s", key, value, writer]`` or ``["d", key, writer]``; or ``{"t", "done": {"ids":
  [id], "answers": [str], "durations": [float]}}`` (:func:`encode_done`): agents whose output is
  the common success (the spec's name, the answer, one turn, no tool calls, tokens, outcome, tools,
  error or state writes, the run's duration), column by column; request =
  ``{"rid", "op": "tool", "job", "tool", "params", "trace"?}`` | ``{"rid", "op": "call", "job",
  "object", "method", "args", "kwargs"?}`` | ``{"rid", "op": "cancel", "target"}``.
* ``rpc``     ``{"t", "rid", "op": "get"|"exists"|"keys"|"call"|"budget", "infra"?, "key"?,
  "job"?, "object"?, "method"?, "args"?}`` (synchronous, on the worker's second DEALER;
  ``budget``: a remote worker's budget call, see ``proxies.RemoteBudget``).
* ``pong``    ``{"t", "n", "rejected", "unknown"?: [id]}`` (``unknown``: the asked jobs
  the worker neither runs nor owes: their results were lost); ``stuck`` ``{"t", "job"}``;
  ``nack``    ``{"t", "err", "jobs"?: [id]}`` (the worker rejected a frame; ``jobs`` it carried).
* ``hb``      ``{"t"}`` from the worker's heartbeat socket (identity ``w{index}.{gen}/h``).
* ``putr``    ``{"t", "rid", "ok" | "gone" | "err"}``: the answer to a ``put`` (``gone``: no such hosted inbox).

Field names are readable: measured on ``python -m bench fanout --executor process``
(100k agents), one-letter keys bought no measurable speed-up.

A frame that breaks these rules raises :class:`~carmulti.WireProtocolError` naming
the rule and the ``$.path`` of the offending field; receivers log it (rate-limited),
count it, fail the jobs it carried and keep serving.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
import zmq

from ...errors import WireProtocolError
from ._fields import _MISSING, _fail, _int, _int_list, _list, _opt, _str, _tn, _want
from ._items import check_job, check_mailbox, check_reply, check_request, check_result

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "PEER", "SOCKET_SLACK", "TO_COORDINATOR", "TO_WORKER", "VERSION", "decode",
           "encode", "encode_done", "encode_fan", "encode_job", "encode_result", "encode_spec", "fan_ready",
           "has_input", "salvage_ids"]

#: The protocol version byte (frame 0 of every message).
VERSION = b"\x01"
#: Largest body frame accepted, in bytes (64 MiB).
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
#: ``ZMQ_MAXMSGSIZE`` is ``max_frame_bytes`` plus this, in bytes: a bigger message disconnects its sender.
SOCKET_SLACK = 1 << 16

Check = Callable[[dict[str, Any], bool], None]


def encode(body: dict[str, Any], blob: bytes | None = None) -> list[bytes]:
    """The frames of one message (``blob`` only for ``runner``/``infra``).

    Raises:
        TypeError: ``body`` is not JSON-serializable (orjson's message).
    """
    frames = [VERSION, orjson.dumps(body)]
    if blob is not None:
        frames.append(blob)
    return frames


def decode(frames: list[bytes], kinds: dict[str, Check], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
           ) -> tuple[dict[str, Any], bytes | None]:
    """Validate one message and return ``(body, blob)``.

    Args:
        frames: The message's frames (identity already stripped).
        kinds: :data:`TO_WORKER` or :data:`TO_COORDINATOR`.
        max_frame_bytes: Largest body accepted, in bytes.

    Raises:
        WireProtocolError: wrong frame count, unknown version byte, empty or
            oversize body, invalid JSON, a body that is not an object, an
            unknown kind, or a field of the wrong type (the error names the
            ``$.path``).
    """
    n = len(frames)
    if n not in (2, 3):
        _fail("$", f"expected 2 or 3 frames, got {n}")
    if frames[0] != VERSION:
        _fail("$", f"unknown protocol version byte {bytes(frames[0])[:8]!r} (expected {VERSION!r})")
    raw = frames[1]
    if not raw:
        _fail("$", "empty body frame")
    if len(raw) > max_frame_bytes:
        _fail("$", f"body of {len(raw)} bytes exceeds max_frame_bytes={max_frame_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireProtocolError("$", f"invalid JSON: {exc}") from None
    if type(body) is not dict:
        _fail("$", f"expected object, got {_tn(body)}")
    t = body.get("t", _MISSING)
    if t is _MISSING:
        _fail("$.t", "missing required field")
    if type(t) is not str:
        _fail("$.t", f"expected str, got {_tn(t)}")
    check = kinds.get(t)
    if check is None:
        _fail("$.t", f"unknown message kind {t!r} (expected one of {', '.join(sorted(kinds))})")
    blob = frames[2] if n == 3 else None
    if blob is not None and t not in ("runner", "infra"):
        _fail("$", f"kind {t!r} takes 2 frames, got 3")
    check(body, blob is not None)  # type: ignore[misc]
    return body, blob


def has_input(sock: Any) -> bool:
    """Whether a ZeroMQ socket has a message ready (``ZMQ_EVENTS`` has ``POLLIN``): both sides' read loops."""
    events: int = sock.getsockopt(zmq.EVENTS)
    return bool(events & zmq.POLLIN)


def salvage_ids(raw: bytes, field: str, key: str) -> list[int]:
    """The ``key`` ints of the items under ``field`` in a body that failed validation (best effort).

    Lets the receiver fail exactly the jobs (or requests) a rejected frame carried.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if type(body) is not dict:
        return []
    if field == "jobs" and body.get("t") == "fan":  # a fan frame's jobs are its ids
        return _ints(body.get("ids"))
    items = body.get(field)
    out = [it[key] for it in items if type(it) is dict and type(it.get(key)) is int] if type(items) is list else []
    if field == "results":  # and a batch's done columns
        done = body.get("done")
        if type(done) is dict:
            out += _ints(done.get("ids"))
    return out


def _ints(v: Any) -> list[int]:
    return [i for i in v if type(i) is int] if type(v) is list else []


# -- building the frames that carry agents ------------------------------------------------------------------------

def encode_spec(spec: Any) -> dict[str, Any]:
    """An ``AgentSpec`` with only the fields that differ from the defaults (most specs: just the name)."""
    if not (spec.system_prompt or spec.tools or spec.max_turns != 10 or spec.metadata or spec.cache_control):
        return {"name": spec.name}
    d: dict[str, Any] = {"name": spec.name}
    if spec.system_prompt:
        d["system_prompt"] = spec.system_prompt
    if spec.tools:
        d["tools"] = spec.tools
    if spec.max_turns != 10:
        d["max_turns"] = spec.max_turns
    if spec.metadata:
        d["metadata"] = spec.metadata
    if spec.cache_control:
        d["cache_control"] = True
    return d


def encode_job(jid: int, runner: int, infra: int, job: Any, timeout_s: float | None,
               mailbox: dict[str, Any] | None, trace: dict[str, str] | None = None) -> dict[str, Any]:
    """One ``jobs`` entry for an ``AgentJob`` (read back by the worker, checked by :func:`decode`)."""
    d: dict[str, Any] = {"id": jid, "runner": runner, "infra": infra, "spec": encode_spec(job.spec), "task": job.task}
    if job.isolated:
        d["isolated"] = True
    if job.tools:
        d["tools"] = dict(job.tools)
        if not job.validate_job_tools:
            d["validate_tools"] = False
    if not job.register_spec_tools:
        d["spec_tools"] = False
    if job.tool_executor is not None:
        d["tool_executor"] = True
    if timeout_s is not None:
        d["timeout_s"] = timeout_s
    if mailbox is not None:
        d["mailbox"] = mailbox
    if trace is not None:
        d["trace"] = trace
    return d


def fan_ready(job: Any) -> bool:
    """Whether ``job`` can travel in a ``fan`` frame: a spec of only its name and every optional field of
    the job at its default (the caller checks the rest: no timeout, no trace context)."""
    spec = job.spec
    return not (job.isolated or job.tools or job.tool_executor is not None or not job.register_spec_tools
                or spec.system_prompt or spec.tools or spec.max_turns != 10 or spec.metadata or spec.cache_control)


def encode_fan(runner: int, infra: int, ids: list[int], names: list[str], tasks: list[str],
               mailbox: dict[str, Any] | None) -> dict[str, Any]:
    """A ``fan`` frame's body: jobs that pass :func:`fan_ready`, column by column.

    Measured against one ``jobs`` entry per job (4,096 name-only jobs, ``timeit``): 0.04 against
    0.42 us a job to build and encode, 0.08 against 0.65 us to decode and check, 19 against 74
    bytes a job.
    """
    d: dict[str, Any] = {"t": "fan", "runner": runner, "infra": infra, "ids": ids, "names": names, "tasks": tasks}
    if mailbox is not None:
        d["mailbox"] = mailbox
    return d


def encode_done(ids: list[int], answers: list[str], durations: list[float]) -> dict[str, Any]:
    """A ``batch`` of common successes, column by column: the coordinator rebuilds each output as
    ``AgentOutput(spec.name, answer, 1, 0, duration, tools_used=[])``.

    Measured against one ``results`` entry per agent (4,096 outputs, ``timeit``): 0.08 against 0.41 us
    an agent to build and encode, 0.36 against 1.19 us to decode, check and rebuild the outputs, 18
    against 96 bytes an agent.
    """
    return {"t": "batch", "done": {"ids": ids, "answers": answers, "durations": durations}}


def encode_result(jid: int, output: list[Any] | None, error: str | None, duration_ms: float,
                  writes: list[Any] | None) -> dict[str, Any]:
    """One ``batch.results`` entry: the wire output (see ``payloads.output_to_wire``) or the error, and the
    agent's state writes in order."""
    r: dict[str, Any] = {"id": jid, "output": output, "error": error, "duration_ms": duration_ms}
    if writes:
        r["writes"] = writes
    return r


# -- coordinator -> worker ----------------------------------------------------------------------------------------

def _v_blob(b: dict[str, Any], blob: bool) -> None:
    _int(b, "id", "$")
    if not blob:
        _fail("$", f"kind {b['t']!r} needs 3 frames (version, body, blob), got 2")


def _v_jobs(b: dict[str, Any], blob: bool) -> None:
    for i, j in enumerate(_list(b, "jobs", "$")):
        check_job(j, i)


def _v_fan(b: dict[str, Any], blob: bool) -> None:
    _int(b, "runner", "$")
    _int(b, "infra", "$")
    ids, names, tasks = _list(b, "ids", "$"), _list(b, "names", "$"), _list(b, "tasks", "$")
    if not len(ids) == len(names) == len(tasks):
        _fail("$", f"ids, names and tasks need one entry per job, got {len(ids)}, {len(names)} and {len(tasks)}")
    for i, v in enumerate(ids):
        if type(v) is not int:
            _fail(f"$.ids[{i}]", f"expected int, got {_tn(v)}")
    for i, v in enumerate(names):
        if type(v) is not str or not v:
            _fail(f"$.names[{i}]", f"expected non-empty str, got {_tn(v) if type(v) is not str else 'empty str'}")
    for i, v in enumerate(tasks):
        if type(v) is not str:
            _fail(f"$.tasks[{i}]", f"expected str, got {_tn(v)}")
    check_mailbox(b, "$")


def _v_ret(b: dict[str, Any], blob: bool) -> None:
    for i, r in enumerate(_list(b, "replies", "$")):
        check_reply(r, f"$.replies[{i}]")


def _v_rret(b: dict[str, Any], blob: bool) -> None:
    check_reply(b, "$")


def _v_cancel(b: dict[str, Any], blob: bool) -> None:
    for i, j in enumerate(_list(b, "jobs", "$")):
        _want(j, int, f"$.jobs[{i}]", "int")


def _v_ping(b: dict[str, Any], blob: bool) -> None:
    _int(b, "n", "$")
    _int_list(b, "jobs")


def _v_forget(b: dict[str, Any], blob: bool) -> None:
    _int_list(b, "runners")
    _int_list(b, "infras")


def _v_none(b: dict[str, Any], blob: bool) -> None:
    pass


def _v_put(b: dict[str, Any], blob: bool) -> None:
    _int(b, "rid", "$")
    _int(b, "hid", "$")
    if "msg" not in b:
        _fail("$", "a put needs 'msg'")
    _opt(b, "timeout_s", (int, float), "$", "number")


def _v_rid(b: dict[str, Any], blob: bool) -> None:
    _int(b, "rid", "$")


def _v_hclose(b: dict[str, Any], blob: bool) -> None:
    _int_list(b, "hids")


def _v_lost(b: dict[str, Any], blob: bool) -> None:
    _str(b, "worker", "$")
    _str(b, "reason", "$")


def _v_phello(b: dict[str, Any], blob: bool) -> None:
    _str(b, "worker", "$")


def _v_putr(b: dict[str, Any], blob: bool) -> None:
    if "ok" in b or "gone" in b:
        _int(b, "rid", "$")
    else:
        check_reply(b, "$")


# -- worker -> coordinator ----------------------------------------------------------------------------------------

def _v_hello(b: dict[str, Any], blob: bool) -> None:
    for key in ("pid", "index", "gen"):
        _int(b, key, "$")
    _str(b, "nonce", "$")


def _v_batch(b: dict[str, Any], blob: bool) -> None:
    done = b.get("done")
    if done is not None:
        _want(done, dict, "$.done", "object")
        ids, answers, durs = _list(done, "ids", "$.done"), _list(done, "answers", "$.done"), \
            _list(done, "durations", "$.done")
        if not len(ids) == len(answers) == len(durs):
            _fail("$.done", f"ids, answers and durations need one entry per agent, got {len(ids)}, "
                            f"{len(answers)} and {len(durs)}")
        for i, v in enumerate(ids):
            if type(v) is not int:
                _fail(f"$.done.ids[{i}]", f"expected int, got {_tn(v)}")
        for i, v in enumerate(answers):
            if type(v) is not str:
                _fail(f"$.done.answers[{i}]", f"expected str, got {_tn(v)}")
        for i, v in enumerate(durs):
            if type(v) is not float:
                _fail(f"$.done.durations[{i}]", f"expected float, got {_tn(v)}")
    ev = b.get("events")
    if ev is not None:
        _want(ev, list, "$.events", "list")
        for i, pair in enumerate(ev):
            p = f"$.events[{i}]"
            if type(pair) is not list or len(pair) != 2:
                _fail(p, "expected [infra, [event, ...]]")
            _want(pair[0], int, f"{p}[0]", "int")
            _want(pair[1], list, f"{p}[1]", "list")
            for k, e in enumerate(pair[1]):
                if type(e) is not dict:
                    _fail(f"{p}[1][{k}]", f"expected object, got {_tn(e)}")
                _str(e, "kind", f"{p}[1][{k}]")
    req = b.get("requests")
    if req is not None:
        _want(req, list, "$.requests", "list")
        for i, q in enumerate(req):
            check_request(q, f"$.requests[{i}]")
    res = b.get("results")
    if res is not None:
        _want(res, list, "$.results", "list")
        for i, r in enumerate(res):
            check_result(r, i)


def _v_rpc(b: dict[str, Any], blob: bool) -> None:
    _int(b, "rid", "$")
    op = _str(b, "op", "$")
    if op in ("get", "exists"):
        _int(b, "infra", "$")
        _str(b, "key", "$")
    elif op == "keys":
        _int(b, "infra", "$")
    elif op == "call":
        _int(b, "job", "$")
        _int(b, "object", "$")
        _str(b, "method", "$")
        _list(b, "args", "$")
    elif op == "budget":
        _int(b, "infra", "$")
        _str(b, "method", "$")
        _list(b, "args", "$")
    else:
        _fail("$.op", f"unknown rpc op {op!r} (expected 'get', 'exists', 'keys', 'call' or 'budget')")


def _v_pong(b: dict[str, Any], blob: bool) -> None:
    _int(b, "n", "$")
    _int(b, "rejected", "$")
    _int_list(b, "unknown")


def _v_stuck(b: dict[str, Any], blob: bool) -> None:
    _int(b, "job", "$")


def _v_nack(b: dict[str, Any], blob: bool) -> None:
    _str(b, "err", "$")
    _int_list(b, "jobs")


#: Kinds a worker accepts (from the coordinator) and their validators.
TO_WORKER: dict[str, Check] = {
    "runner": _v_blob, "infra": _v_blob, "jobs": _v_jobs, "fan": _v_fan, "ret": _v_ret, "rret": _v_rret,
    "cancel": _v_cancel, "ping": _v_ping, "stop": _v_none, "forget": _v_forget, "put": _v_put,
    "pcancel": _v_rid, "hclose": _v_hclose, "lost": _v_lost,
}
#: Kinds on a connection between two workers, either way: who connected, puts, and their answers.
PEER: dict[str, Check] = {"phello": _v_phello, "put": _v_put, "pcancel": _v_rid, "putr": _v_putr}
#: Kinds the coordinator accepts (from a worker) and their validators.
TO_COORDINATOR: dict[str, Check] = {
    "hello": _v_hello, "batch": _v_batch, "rpc": _v_rpc, "pong": _v_pong, "stuck": _v_stuck, "nack": _v_nack,
    "hb": _v_none, "putr": _v_putr,
}
