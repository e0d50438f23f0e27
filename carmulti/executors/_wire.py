"""The wire format between the :class:`~carmulti.ProcessExecutor` coordinator and its workers.

Every ZeroMQ message is a multipart message of **two or three frames**::

    [version: 1 byte = b"\\x01"] [body: orjson object with "t" = kind] [blob: bytes]?

(on the coordinator's ROUTER socket the peer identity frame comes first and is
stripped before :func:`decode`). Only the ``runner`` and ``infra`` kinds carry a
third frame (a dill pickle). Many jobs, results, events and requests travel in
one frame: the sender flushes once per event-loop iteration.

Kinds, coordinator → worker:

* ``runner``  ``{"t", "id": int}`` + blob: a runner, cached by ``id`` in the worker.
* ``infra``   ``{"t", "id": int}`` + blob: ``(budget, policies)`` of one ``SharedInfra``.
* ``jobs``    ``{"t", "jobs": [job]}``; job = ``{"id": int, "r": int, "i": int,
  "spec": {"name": str, ...AgentSpec.to_dict fields, optional}, "task": str,
  "iso"?: bool, "tools"?: {name: schema|null}, "st"?: bool, "tv"?: bool (validate job tools), "tex"?: bool,
  "to"?: number, "mb"?: mailbox descriptor}``.
* ``ret``     ``{"t", "rets": [{"rid": int, "ok": any} | {"rid": int, "err": error}]}``.
* ``rret``    the reply to one synchronous ``rpc`` (same shape as one ``ret`` entry).
* ``cancel``  ``{"t", "jobs": [int]}``: the caller cancelled these jobs.
* ``ping``    ``{"t", "n": int, "jobs"?: [int]}`` (``jobs``: which of these does the worker
  still run or owe a result for?);  ``stop`` ``{"t"}``.
* ``forget``  ``{"t", "runners"?: [int], "infras"?: [int]}``: cached runners / infras no
  coordination needs any more (an infra is released when its last running job ends).

Kinds, worker → coordinator:

* ``hello``   ``{"t", "pid": int, "index": int, "gen": int}``.
* ``batch``   ``{"t", "ev": [[infra_id, [event]]], "req": [request], "res": [result]}``;
  result = ``{"id": int, "out": output | null, "err": str | null, "dur": number,
  "ops"?: [op]}``; output = ``[name, answer, turns, tool_calls, duration_ms,
  outcome, tokens, tools_used]`` (the ``AgentOutput`` fields, positional to
  keep 100k-agent batches cheap; ``tokens`` = ``[input, output, cost_usd]`` or
  null); op = ``["s", key, value, writer]`` or ``["d", key, writer]`` (the
  agent's state writes in order).
* ``rpc``     ``{"t", "rid": int, "op": "get"|"exists"|"keys"|"call", "i"?: int,
  "k"?: str, "job"?: int, "o"?: int, "m"?: str, "a"?: list}`` (synchronous
  request on the worker's second DEALER; answered by ``rret``).
* ``pong``    ``{"t", "n": int, "rejected": int, "unknown"?: [int]}`` (``unknown``: the asked
  jobs the worker neither runs nor owes: their results were lost); ``stuck`` ``{"t", "job": int}``;
  ``nack``    ``{"t", "err": str, "jobs"?: [int]}`` (the worker rejected a frame; ``jobs`` it carried).
* ``hb``      ``{"t"}`` from the worker's heartbeat socket (identity ``w{index}.{gen}/h``), every
  ``heartbeat_timeout_s / 5`` seconds.

A frame that breaks these rules raises :class:`~carmulti.WireProtocolError`
naming the rule and the ``$.path`` of the offending field; receivers log it,
count it and keep serving.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

import orjson

from ..errors import WireProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "VERSION",
    "decode",
    "encode",
    "encode_error",
    "find_unserializable",
]

#: The protocol version byte (frame 0 of every message).
VERSION = b"\x01"
#: Largest body frame accepted, in bytes (64 MiB).
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
#: ``ZMQ_MAXMSGSIZE`` is ``max_frame_bytes`` plus this, in bytes: a bigger message disconnects its sender.
SOCKET_SLACK = 1 << 16

_NUM = (int, float)
_TYPE_NAMES = {str: "str", int: "int", float: "number", bool: "bool", list: "list", dict: "object",
               type(None): "null"}


def _tn(v: Any) -> str:
    return _TYPE_NAMES.get(type(v), type(v).__name__)


def encode(body: dict[str, Any], blob: bytes | None = None) -> list[bytes]:
    """The frames of one message (``blob`` only for ``runner``/``infra``).

    Raises:
        TypeError: ``body`` is not JSON-serializable (orjson's message).
    """
    frames = [VERSION, orjson.dumps(body)]
    if blob is not None:
        frames.append(blob)
    return frames


# -- validation helpers -----------------------------------------------------------

def _fail(path: str, msg: str) -> None:
    raise WireProtocolError(path, msg)


def _want(v: Any, typ: type | tuple[type, ...], path: str, what: str) -> None:
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, _NUM)):
        _fail(path, f"expected {what}, got {_tn(v)}")


def _int(d: dict[str, Any], key: str, path: str) -> int:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        _fail(f"{path}.{key}", "missing required field")
    if type(v) is not int:
        _fail(f"{path}.{key}", f"expected int, got {_tn(v)}")
    return v


def _str(d: dict[str, Any], key: str, path: str) -> str:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        _fail(f"{path}.{key}", "missing required field")
    if type(v) is not str:
        _fail(f"{path}.{key}", f"expected str, got {_tn(v)}")
    return v


def _opt(d: dict[str, Any], key: str, typ: Any, path: str, what: str) -> None:
    v = d.get(key)
    if v is not None:
        _want(v, typ, f"{path}.{key}", what)


def _list(d: dict[str, Any], key: str, path: str) -> list[Any]:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        _fail(f"{path}.{key}", "missing required field")
    if type(v) is not list:
        _fail(f"{path}.{key}", f"expected list, got {_tn(v)}")
    return v


_MISSING = object()


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


def _check_job(j: Any, path: str) -> None:
    if not (type(j) is dict and type(j.get("id")) is int and type(j.get("r")) is int
            and type(j.get("i")) is int and type(j.get("task")) is str and type(s := j.get("spec")) is dict
            and len(s) == 1 and type(s.get("name")) is str and s["name"]):
        # slow path: find and name the bad field
        if type(j) is not dict:
            _fail(path, f"expected object, got {_tn(j)}")
        _int(j, "id", path)
        _int(j, "r", path)
        _int(j, "i", path)
        spec = j.get("spec", _MISSING)
        if spec is _MISSING:
            _fail(f"{path}.spec", "missing required field")
        _check_spec(spec, f"{path}.spec")
        _str(j, "task", path)
    if len(j) > 5:
        _opt(j, "iso", bool, path, "bool")
        _opt(j, "st", bool, path, "bool")
        _opt(j, "tv", bool, path, "bool")
        _opt(j, "tex", bool, path, "bool")
        _opt(j, "to", _NUM, path, "number")
        tools = j.get("tools")
        if tools is not None:
            _want(tools, dict, f"{path}.tools", "object")
            for k, v in tools.items():
                if v is not None:
                    _want(v, dict, f"{path}.tools.{k}", "object or null")
        mb = j.get("mb")
        if mb is not None:
            _want(mb, dict, f"{path}.mb", "object")
            kind = mb.get("k")
            if kind == "mb":
                _int(mb, "o", f"{path}.mb")
                _int(mb, "bs", f"{path}.mb")
            elif kind == "pool":
                _int(mb, "aid", f"{path}.mb")
                _int(mb, "ib", f"{path}.mb")
                _int(mb, "rt", f"{path}.mb")
                _int(mb, "cap", f"{path}.mb")
            else:
                _fail(f"{path}.mb.k", f"unknown mailbox kind {kind!r} (expected 'mb' or 'pool')")


#: Field names of the positional output array (used in error paths); ``error`` is present only when set.
OUTPUT_FIELDS = ("name", "answer", "turns", "tool_calls", "duration_ms", "outcome", "tokens", "tools_used", "error")
#: Tag of a str that JSON cannot carry (it holds lone surrogates): ``{"$u": base64 of its surrogatepass UTF-8}``.
SURROGATE_TAG = "$u"


def output_to_wire(o: Any) -> list[Any]:
    """An ``AgentOutput`` as the positional wire array (``error`` appended only when set)."""
    t = o.tokens
    out = [o.name, o.answer, o.turns, o.tool_calls, o.duration_ms, o.outcome,
           None if t is None else [t.input_tokens, t.output_tokens, t.cost_usd], o.tools_used]
    if o.error is not None:
        out.append(o.error)
    return out


def escape_strings(out: list[Any]) -> list[Any]:
    """``out`` (a wire output) with every str orjson refuses (lone surrogates) tagged, for :func:`output_from_wire`."""
    def esc(s: Any) -> Any:
        if type(s) is str:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                return {SURROGATE_TAG: base64.b64encode(s.encode("utf-8", "surrogatepass")).decode("ascii")}
        return s

    out = list(out)
    for k in (0, 1, 8):
        if k < len(out):
            out[k] = esc(out[k])
    if type(out[7]) is list:
        out[7] = [esc(x) for x in out[7]]
    return out


def _unescape(v: Any) -> Any:
    if type(v) is dict:
        return base64.b64decode(v[SURROGATE_TAG]).decode("utf-8", "surrogatepass")
    return v


def output_from_wire(o: list[Any]) -> Any:
    """Inverse of :func:`output_to_wire` (for an array that passed :func:`decode`)."""
    from ..types import AgentOutput, TokenAccounting

    tok = o[6]
    tools = o[7]
    if len(o) == 9:
        name, answer, error = _unescape(o[0]), _unescape(o[1]), _unescape(o[8])
        tools = [_unescape(t) for t in tools]
    else:
        name, answer, error = o[0], o[1], None
        if type(name) is dict or type(answer) is dict or any(type(t) is dict for t in tools):
            name, answer, tools = _unescape(name), _unescape(answer), [_unescape(t) for t in tools]
    return AgentOutput(name, answer, o[2], o[3], float(o[4]), error, o[5],
                       None if tok is None else TokenAccounting(tok[0], tok[1], float(tok[2])), tools)


def _want_str(v: Any, path: str) -> None:
    if type(v) is dict and len(v) == 1 and type(v.get(SURROGATE_TAG)) is str:
        try:
            base64.b64decode(v[SURROGATE_TAG], validate=True).decode("utf-8", "surrogatepass")
        except (ValueError, UnicodeDecodeError) as exc:
            _fail(path, f"bad {SURROGATE_TAG} string: {exc}")
        return
    _want(v, str, path, "str")


def _check_output(o: Any, path: str) -> None:
    if (type(o) is list and len(o) == 8 and type(o[0]) is str and type(o[1]) is str and type(o[2]) is int
            and type(o[3]) is int and type(o[4]) is float and o[6] is None and type(o[7]) is list and not o[7]):
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


def _check_result(r: Any, path: str) -> None:
    if type(r) is dict and type(r.get("id")) is int and type(r.get("dur")) is float and r.get("err") is None \
            and r.get("out") is not None and r.get("ops") is None:
        _check_output(r["out"], f"{path}.out")
        return
    if type(r) is not dict:
        _fail(path, f"expected object, got {_tn(r)}")
    _int(r, "id", path)
    out = r.get("out")
    if out is not None:
        _check_output(out, f"{path}.out")
    err = r.get("err")
    if err is not None and type(err) is not str:
        _fail(f"{path}.err", f"expected str or null, got {_tn(err)}")
    if out is None and err is None:
        _fail(f"{path}.err", "a result needs 'out' or 'err'")
    dur = r.get("dur", _MISSING)
    if dur is _MISSING:
        _fail(f"{path}.dur", "missing required field")
    _want(dur, _NUM, f"{path}.dur", "number")
    ops = r.get("ops")
    if ops is not None:
        _want(ops, list, f"{path}.ops", "list or null")
        for i, op in enumerate(ops):
            p = f"{path}.ops[{i}]"
            _want(op, list, p, "list")
            if len(op) == 4 and op[0] == "s":
                _want(op[1], str, f"{p}[1]", "str")
                _want(op[3], str, f"{p}[3]", "str")
            elif len(op) == 3 and op[0] == "d":
                _want(op[1], str, f"{p}[1]", "str")
                _want(op[2], str, f"{p}[2]", "str")
            else:
                _fail(p, "expected [\"s\", key, value, writer] or [\"d\", key, writer]")


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
    elif op == "call":
        _int(q, "job", path)
        _int(q, "o", path)
        _str(q, "m", path)
        _list(q, "a", path)
    elif op == "cancel":
        _int(q, "target", path)
    else:
        _fail(f"{path}.op", f"unknown request op {op!r} (expected 'tool', 'call' or 'cancel')")


def _check_ret(r: Any, path: str) -> None:
    if type(r) is not dict:
        _fail(path, f"expected object, got {_tn(r)}")
    _int(r, "rid", path)
    if "ok" not in r:
        err = r.get("err", _MISSING)
        if err is _MISSING:
            _fail(path, "a reply needs 'ok' or 'err'")
        _want(err, dict, f"{path}.err", "object")
        _str(err, "type", f"{path}.err")


def _v_runner(b: dict[str, Any], blob: bool) -> None:
    _int(b, "id", "$")
    if not blob:
        _fail("$", "kind 'runner' needs 3 frames (version, body, blob), got 2")


def _v_jobs(b: dict[str, Any], blob: bool) -> None:
    for i, j in enumerate(_list(b, "jobs", "$")):
        _check_job(j, f"$.jobs[{i}]")


def _v_ret(b: dict[str, Any], blob: bool) -> None:
    for i, r in enumerate(_list(b, "rets", "$")):
        _check_ret(r, f"$.rets[{i}]")


def _v_rret(b: dict[str, Any], blob: bool) -> None:
    _check_ret(b, "$")


def _v_cancel(b: dict[str, Any], blob: bool) -> None:
    for i, j in enumerate(_list(b, "jobs", "$")):
        _want(j, int, f"$.jobs[{i}]", "int")


def _int_list(b: dict[str, Any], key: str) -> None:
    v = b.get(key)
    if v is not None:
        _want(v, list, f"$.{key}", "list")
        for i, j in enumerate(v):
            _want(j, int, f"$.{key}[{i}]", "int")


def _v_n(b: dict[str, Any], blob: bool) -> None:
    _int(b, "n", "$")
    _int_list(b, "jobs")


def _v_forget(b: dict[str, Any], blob: bool) -> None:
    _int_list(b, "runners")
    _int_list(b, "infras")


def _v_none(b: dict[str, Any], blob: bool) -> None:
    pass


def _v_hello(b: dict[str, Any], blob: bool) -> None:
    _int(b, "pid", "$")
    _int(b, "index", "$")
    _int(b, "gen", "$")


def _v_batch(b: dict[str, Any], blob: bool) -> None:
    ev = b.get("ev")
    if ev is not None:
        _want(ev, list, "$.ev", "list")
        for i, pair in enumerate(ev):
            p = f"$.ev[{i}]"
            if type(pair) is not list or len(pair) != 2:
                _fail(p, "expected [infra_id, [event, ...]]")
            _want(pair[0], int, f"{p}[0]", "int")
            _want(pair[1], list, f"{p}[1]", "list")
            for k, e in enumerate(pair[1]):
                if type(e) is not dict:
                    _fail(f"{p}[1][{k}]", f"expected object, got {_tn(e)}")
                _str(e, "kind", f"{p}[1][{k}]")
    req = b.get("req")
    if req is not None:
        _want(req, list, "$.req", "list")
        for i, q in enumerate(req):
            _check_request(q, f"$.req[{i}]")
    res = b.get("res")
    if res is not None:
        _want(res, list, "$.res", "list")
        for i, r in enumerate(res):
            _check_result(r, f"$.res[{i}]")


def _v_rpc(b: dict[str, Any], blob: bool) -> None:
    _int(b, "rid", "$")
    op = _str(b, "op", "$")
    if op in ("get", "exists"):
        _int(b, "i", "$")
        _str(b, "k", "$")
    elif op == "keys":
        _int(b, "i", "$")
    elif op == "call":
        _int(b, "job", "$")
        _int(b, "o", "$")
        _str(b, "m", "$")
        _list(b, "a", "$")
    else:
        _fail("$.op", f"unknown rpc op {op!r} (expected 'get', 'exists', 'keys' or 'call')")


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
TO_WORKER: dict[str, Callable[[dict[str, Any], bool], None]] = {
    "runner": _v_runner, "infra": _v_runner, "jobs": _v_jobs, "ret": _v_ret, "rret": _v_rret,
    "cancel": _v_cancel, "ping": _v_n, "stop": _v_none, "forget": _v_forget,
}
#: Kinds the coordinator accepts (from a worker) and their validators.
TO_COORDINATOR: dict[str, Callable[[dict[str, Any], bool], None]] = {
    "hello": _v_hello, "batch": _v_batch, "rpc": _v_rpc, "pong": _v_pong, "stuck": _v_stuck, "nack": _v_nack,
    "hb": _v_none,
}


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


def decode(frames: list[bytes], kinds: dict[str, Callable[[dict[str, Any], bool], None]],
           max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> tuple[dict[str, Any], bytes | None]:
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
    v = frames[0]
    if v != VERSION:
        _fail("$", f"unknown protocol version byte {bytes(v)[:8]!r} (expected {VERSION!r})")
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


# -- frames sized by bytes -----------------------------------------------------------

#: Room kept in every frame for the envelope around its items, in bytes.
FRAME_OVERHEAD = 256


def pack_frames(prefix: bytes, suffix: bytes, parts: list[bytes], limit: int) -> list[bytes]:
    """Join pre-encoded JSON items into as few bodies ``prefix + a,b,c + suffix`` of at most ``limit`` bytes.

    Every part must fit alone (``len(part) <= limit - FRAME_OVERHEAD``); the
    caller fails or replaces the ones that do not.
    """
    frames: list[bytes] = []
    cur: list[bytes] = []
    base = len(prefix) + len(suffix)
    size = base
    for b in parts:
        if cur and size + len(b) + 1 > limit:
            frames.append(prefix + b",".join(cur) + suffix)
            cur = []
            size = base
        cur.append(b)
        size += len(b) + 1
    if cur:
        frames.append(prefix + b",".join(cur) + suffix)
    return frames


def too_big(what: str, size: int, limit: int) -> str:
    """The error text for a payload that cannot travel in one frame."""
    return (f"{what} is {size} bytes on the wire, which exceeds max_frame_bytes={limit}: pass large data "
            f"through files (or in pieces), or raise ProcessExecutor(max_frame_bytes=...)")


# -- errors across the wire ------------------------------------------------------------

def encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception as ``{"type", "msg", "args"}`` (mailbox errors keep their constructor args)."""
    from ..errors import MailboxFull, MailboxSend, MailboxTimeout

    name = type(exc).__name__
    if isinstance(exc, MailboxFull):
        return {"type": "MailboxFull", "msg": str(exc), "args": [exc.to, exc.capacity, exc.timeout_s]}
    if isinstance(exc, MailboxSend):
        return {"type": "MailboxSend", "msg": str(exc), "args": [exc.msg]}
    if isinstance(exc, MailboxTimeout):
        return {"type": "MailboxTimeout", "msg": str(exc), "args": [exc.agent]}
    return {"type": name, "msg": str(exc), "args": []}


def decode_error(err: dict[str, Any]) -> BaseException:
    """Inverse of :func:`encode_error` (unknown types become ``ToolError("{type}: {msg}")``)."""
    from ..errors import MailboxFull, MailboxSend, MailboxTimeout, ToolError, WireProtocolError as WPE

    t = err.get("type")
    args = err.get("args") or []
    msg = err.get("msg", "")
    try:
        if t == "MailboxFull":
            return MailboxFull(*args)
        if t == "MailboxSend":
            return MailboxSend(*args)
        if t == "MailboxTimeout":
            return MailboxTimeout(*args)
    except TypeError:
        pass
    if t == "ToolError":
        return ToolError(msg)
    if t == "WireProtocolError":
        return WPE("$", msg)
    if t in ("TypeError", "ValueError", "RuntimeError", "TimeoutError"):
        return {"TypeError": TypeError, "ValueError": ValueError, "RuntimeError": RuntimeError,
                "TimeoutError": TimeoutError}[t](msg)
    return ToolError(f"{t}: {msg}" if msg else str(t))


def find_unserializable(value: Any, path: str = "$") -> tuple[str, str] | None:
    """The first ``($.path, reason)`` inside ``value`` that orjson cannot serialize, or ``None``."""
    try:
        orjson.dumps(value)
        return None
    except TypeError as exc:
        reason = str(exc)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path}", f"object key {k!r} is not a str"
            sub = find_unserializable(v, f"{path}.{k}")
            if sub is not None:
                return sub
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            sub = find_unserializable(v, f"{path}[{i}]")
            if sub is not None:
                return sub
    return path, reason
