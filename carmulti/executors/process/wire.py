"""The wire format between the :class:`~carmulti.ProcessExecutor` coordinator and its workers.

Owns every frame kind: how it is built (``encode_*``) and how it is checked and
read (:func:`decode` with the validators below), side by side. Payload codecs
shared by several kinds (outputs, state writes, tagged values, errors, sizes)
are in :mod:`.payloads`, the field checks the validators are made of in
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
  write = ``["s", key, value, writer]`` or ``["d", key, writer]``; request =
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
from ._fields import _MISSING, _NUM, _fail, _int, _int_list, _list, _opt, _str, _tn, _trace, _want, _want_str
from .payloads import OUTPUT_FIELDS

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "PEER", "SOCKET_SLACK", "TO_COORDINATOR", "TO_WORKER", "VERSION", "decode", "encode",
           "encode_job", "encode_result", "encode_spec", "has_input", "salvage_ids"]

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
    items = body.get(field) if type(body) is dict else None
    if type(items) is not list:
        return []
    return [it[key] for it in items if type(it) is dict and type(it.get(key)) is int]


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


def encode_result(jid: int, output: list[Any] | None, error: str | None, duration_ms: float,
                  writes: list[Any] | None) -> dict[str, Any]:
    """One ``batch.results`` entry: the wire output (see ``payloads.output_to_wire``) or the error, and the
    agent's state writes in order."""
    r: dict[str, Any] = {"id": jid, "output": output, "error": error, "duration_ms": duration_ms}
    if writes:
        r["writes"] = writes
    return r


# -- coordinator -> worker ----------------------------------------------------------------------------------------

def _check_spec(s: Any, path: str) -> None:
    if type(s) is not dict:
        _fail(path, f"expected object, got {_tn(s)}")
    name = s.get("name", _MISSING)
    if name is _MISSING:
        _fail(f"{path}.name", "missing required field")
    if type(name) is not str or not name:
        _fail(f"{path}.name", f"expected non-empty str, got {_tn(name) if type(name) is not str else 'empty str'}")
    if len(s) > 1:
        _opt(s, "system_prompt", str, path, "str")
        tools = s.get("tools")
        if tools is not None:
            _want(tools, list, f"{path}.tools", "list")
            for i, t in enumerate(tools):
                _want(t, str, f"{path}.tools[{i}]", "str")
        _opt(s, "max_turns", int, path, "int")
        _opt(s, "metadata", dict, path, "object")
        _opt(s, "cache_control", bool, path, "bool")


def _check_job(j: Any, i: int) -> None:
    """Job ``i`` of a jobs frame. The two shapes of a big fan-out (the required fields and a name-only spec, alone
    or with the coordinator's mailbox) are checked in one expression, without building the job's ``$.path``
    (1.2 us a job otherwise); anything else gets the field-by-field check."""
    required = (type(j) is dict and type(j.get("id")) is int and type(j.get("runner")) is int
                and type(j.get("infra")) is int and type(j.get("task")) is str and type(s := j.get("spec")) is dict
                and len(s) == 1 and type(s.get("name")) is str and bool(s["name"]))
    if required:
        n = len(j)
        if n == 5:
            return
        if n == 6 and type(mb := j.get("mailbox")) is dict and mb.get("kind") == "mailbox" \
                and type(mb.get("object")) is int and type(mb.get("buffer_size")) is int:
            return
    _check_job_fields(j, f"$.jobs[{i}]", required)


def _check_job_fields(j: Any, path: str, required_ok: bool) -> None:
    """The field-by-field check of a job; ``required_ok``: its required fields and name-only spec already passed."""
    if not required_ok:  # find and name the bad field
        if type(j) is not dict:
            _fail(path, f"expected object, got {_tn(j)}")
        _int(j, "id", path)
        _int(j, "runner", path)
        _int(j, "infra", path)
        if "spec" not in j:
            _fail(f"{path}.spec", "missing required field")
        _check_spec(j["spec"], f"{path}.spec")
        _str(j, "task", path)
    if len(j) > 5:
        for key in ("isolated", "spec_tools", "validate_tools", "tool_executor"):
            _opt(j, key, bool, path, "bool")
        _opt(j, "timeout_s", _NUM, path, "number")
        _trace(j, path)
        tools = j.get("tools")
        if tools is not None:
            _want(tools, dict, f"{path}.tools", "object")
            for k, v in tools.items():
                if v is not None:
                    _want(v, dict, f"{path}.tools.{k}", "object or null")
        mb = j.get("mailbox")
        if mb is not None:
            p = f"{path}.mailbox"
            _want(mb, dict, p, "object")
            kind = mb.get("kind")
            if kind == "mailbox":
                _int(mb, "object", p)
                _int(mb, "buffer_size", p)
            elif kind == "pool":
                for key in ("agent_id", "inbox", "router", "capacity"):
                    _int(mb, key, p)
            else:
                _fail(f"{p}.kind", f"unknown mailbox kind {kind!r} (expected 'mailbox' or 'pool')")


def _check_reply(r: Any, path: str) -> None:
    if type(r) is not dict:
        _fail(path, f"expected object, got {_tn(r)}")
    _int(r, "rid", path)
    if "ok" not in r:
        err = r.get("err", _MISSING)
        if err is _MISSING:
            _fail(path, "a reply needs 'ok' or 'err'")
        _want(err, dict, f"{path}.err", "object")
        _str(err, "type", f"{path}.err")


def _v_blob(b: dict[str, Any], blob: bool) -> None:
    _int(b, "id", "$")
    if not blob:
        _fail("$", f"kind {b['t']!r} needs 3 frames (version, body, blob), got 2")


def _v_jobs(b: dict[str, Any], blob: bool) -> None:
    for i, j in enumerate(_list(b, "jobs", "$")):
        _check_job(j, i)


def _v_ret(b: dict[str, Any], blob: bool) -> None:
    for i, r in enumerate(_list(b, "replies", "$")):
        _check_reply(r, f"$.replies[{i}]")


def _v_rret(b: dict[str, Any], blob: bool) -> None:
    _check_reply(b, "$")


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
        _check_reply(b, "$")


# -- worker -> coordinator ----------------------------------------------------------------------------------------

def _plain_output(o: Any) -> bool:
    """The common shape of a successful agent's output: a str answer, no tokens, no tools."""
    return (type(o) is list and len(o) == 8 and type(o[0]) is str and type(o[1]) is str and type(o[2]) is int
            and type(o[3]) is int and type(o[4]) is float and o[6] is None and type(o[7]) is list and not o[7])


def _check_output(o: Any, path: str) -> None:
    if _plain_output(o):
        return  # fast path: the common shape
    if type(o) is not list:
        _fail(path, f"expected list [{', '.join(OUTPUT_FIELDS)}], got {_tn(o)}")
    if len(o) not in (8, 9):
        _fail(path, f"expected 8 fields [{', '.join(OUTPUT_FIELDS[:8])}] (+ error), got {len(o)}")
    _want_str(o[0], f"{path}[0] (name)")
    _want_str(o[1], f"{path}[1] (answer)")
    _want(o[2], int, f"{path}[2] (turns)", "int")
    _want(o[3], int, f"{path}[3] (tool_calls)", "int")
    _want(o[4], _NUM, f"{path}[4] (duration_ms)", "number")
    tok = o[6]
    if tok is not None:
        p = f"{path}[6] (tokens)"
        if type(tok) is not list or len(tok) != 3:
            _fail(p, f"expected [input_tokens, output_tokens, cost_usd] or null, got {_tn(tok)}")
        _want(tok[0], int, f"{p}[0]", "int")
        _want(tok[1], int, f"{p}[1]", "int")
        _want(tok[2], _NUM, f"{p}[2]", "number")
    _want(o[7], list, f"{path}[7] (tools_used)", "list")
    for i, t in enumerate(o[7]):
        _want_str(t, f"{path}[7][{i}]")
    if len(o) == 9:
        _want_str(o[8], f"{path}[8] (error)")


def _check_writes(ws: Any, path: str) -> None:
    _want(ws, list, path, "list or null")
    for i, op in enumerate(ws):
        p = f"{path}[{i}]"
        _want(op, list, p, "list")
        if len(op) == 4 and op[0] == "s":
            _want(op[1], str, f"{p}[1]", "str")
            _want(op[3], str, f"{p}[3]", "str")
        elif len(op) == 3 and op[0] == "d":
            _want(op[1], str, f"{p}[1]", "str")
            _want(op[2], str, f"{p}[2]", "str")
        else:
            _fail(p, "expected [\"s\", key, value, writer] or [\"d\", key, writer]")


def _check_result(r: Any, i: int) -> None:
    """Result ``i`` of a batch. A successful agent's common shape (a str answer, no tokens, no tools, no writes)
    is checked in one expression, without building the result's ``$.path``; anything else field by field."""
    if (type(r) is dict and type(r.get("id")) is int and type(r.get("duration_ms")) is float
            and r.get("error") is None and r.get("writes") is None and _plain_output(r.get("output"))):
        return
    _check_result_fields(r, f"$.results[{i}]")


def _check_result_fields(r: Any, path: str) -> None:
    if type(r) is not dict:
        _fail(path, f"expected object, got {_tn(r)}")
    _int(r, "id", path)
    out = r.get("output")
    if out is not None:
        _check_output(out, f"{path}.output")
    err = r.get("error")
    if err is not None and type(err) is not str:
        _fail(f"{path}.error", f"expected str or null, got {_tn(err)}")
    if out is None and err is None:
        _fail(f"{path}.error", "a result needs 'output' or 'error'")
    dur = r.get("duration_ms", _MISSING)
    if dur is _MISSING:
        _fail(f"{path}.duration_ms", "missing required field")
    _want(dur, _NUM, f"{path}.duration_ms", "number")
    if r.get("writes") is not None:
        _check_writes(r["writes"], f"{path}.writes")


def _check_request(q: Any, path: str) -> None:
    if type(q) is not dict:
        _fail(path, f"expected object, got {_tn(q)}")
    _int(q, "rid", path)
    op = _str(q, "op", path)
    if op == "tool":
        _int(q, "job", path)
        _str(q, "tool", path)
        if "params" not in q:
            _fail(f"{path}.params", "missing required field")
        _trace(q, path)
    elif op == "call":
        _int(q, "job", path)
        _int(q, "object", path)
        _str(q, "method", path)
        _list(q, "args", path)
        _opt(q, "kwargs", dict, path, "object")
    elif op == "cancel":
        _int(q, "target", path)
    else:
        _fail(f"{path}.op", f"unknown request op {op!r} (expected 'tool', 'call' or 'cancel')")


def _v_hello(b: dict[str, Any], blob: bool) -> None:
    for key in ("pid", "index", "gen"):
        _int(b, key, "$")
    _str(b, "nonce", "$")


def _v_batch(b: dict[str, Any], blob: bool) -> None:
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
            _check_request(q, f"$.requests[{i}]")
    res = b.get("results")
    if res is not None:
        _want(res, list, "$.results", "list")
        for i, r in enumerate(res):
            _check_result(r, i)


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
    "runner": _v_blob, "infra": _v_blob, "jobs": _v_jobs, "ret": _v_ret, "rret": _v_rret,
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
