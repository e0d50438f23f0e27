"""Payload codecs shared by several frame kinds of the process executor's wire (see :mod:`.wire`).

Owns, each with its encode and decode side by side: agent outputs (a
positional array), state writes, tagged values (mailbox messages), errors
across the wire; and how payloads are sized into frames (:func:`pack_frames`,
:func:`too_big`).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ...mailbox import AgentMessage
from ...types import AgentOutput, Message, TokenAccounting

__all__ = ["FRAME_OVERHEAD", "OUTPUT_FIELDS", "SURROGATE_TAG", "apply_writes", "decode_error", "decode_value",
           "encode_error", "encode_value", "escape_strings", "find_unserializable", "one_frame", "output_from_wire",
           "output_to_wire", "pack_frames", "split_batch", "too_big"]

# -- outputs -------------------------------------------------------------------------------------------------------

#: Field names of the positional output array (used in error paths); ``error`` is present only when set.
OUTPUT_FIELDS = ("name", "answer", "turns", "tool_calls", "duration_ms", "outcome", "tokens", "tools_used", "error")
#: Tag of a str that JSON cannot carry (it holds lone surrogates): ``{"$u": base64 of its surrogatepass UTF-8}``.
SURROGATE_TAG = "$u"


def output_to_wire(o: AgentOutput) -> list[Any]:
    """An ``AgentOutput`` as ``[name, answer, turns, tool_calls, duration_ms, outcome, tokens, tools_used,
    error?]`` (``tokens`` = ``[input, output, cost_usd]`` or null; ``error`` appended only when set):
    positional, to keep 100k-agent batches cheap."""
    t = o.tokens
    out = [o.name, o.answer, o.turns, o.tool_calls, o.duration_ms, o.outcome,
           None if t is None else [t.input_tokens, t.output_tokens, t.cost_usd], o.tools_used]
    if o.error is not None:
        out.append(o.error)
    return out


def output_from_wire(o: list[Any]) -> AgentOutput:
    """Inverse of :func:`output_to_wire` (for an array that passed ``wire.decode``)."""
    tok = o[6]
    tools = o[7]
    if len(o) == 9:
        name, answer, error = _unescape(o[0]), _unescape(o[1]), _unescape(o[8])
        tools = [_unescape(t) for t in tools]
    else:
        name, answer, error = o[0], o[1], None
        if type(name) is dict or type(answer) is dict or (tools and any(type(t) is dict for t in tools)):
            name, answer, tools = _unescape(name), _unescape(answer), [_unescape(t) for t in tools]
    return AgentOutput(name, answer, o[2], o[3], float(o[4]), error, o[5],
                       None if tok is None else TokenAccounting(tok[0], tok[1], float(tok[2])), tools)


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


# -- state writes --------------------------------------------------------------------------------------------------

def apply_writes(state: Any, writes: list[list[Any]]) -> None:
    """Replay an agent's recorded writes (``["s", key, value, writer]`` / ``["d", key, writer]``), in order,
    on ``state`` (the shared store, or the agent's overlay when isolated)."""
    for op in writes:
        if op[0] == "s":
            state.set(op[1], op[2], op[3])
        else:
            state.delete(op[1], op[2])


# -- values (mailbox calls) ----------------------------------------------------------------------------------------

def encode_value(v: Any) -> Any:
    """Messages as tagged objects (``{"$msg": ...}``, ``{"$amsg": ...}``); everything else as JSON."""
    if isinstance(v, Message):
        return {"$msg": v.to_dict()}
    if isinstance(v, AgentMessage):
        return {"$amsg": {"from_id": v.from_id, "to": v.to, "content": v.content}}
    return v


def decode_value(v: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    if type(v) is dict and len(v) == 1:
        if "$msg" in v:
            return Message.from_dict(v["$msg"])
        if "$amsg" in v:
            d = v["$amsg"]
            return AgentMessage(d["from_id"], d["to"], d["content"])
    return v


def is_message(v: Any) -> bool:
    """Whether an encoded value is a tagged message (a reply that must never be lost)."""
    return type(v) is dict and ("$msg" in v or "$amsg" in v)


# -- errors --------------------------------------------------------------------------------------------------------

def encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception as ``{"type", "msg", "args"}`` (mailbox errors keep their constructor args)."""
    from ...errors import BudgetError, MailboxFull, MailboxSend, MailboxTimeout

    if isinstance(exc, BudgetError):
        return {"type": "BudgetError", "msg": str(exc),
                "args": [exc.kind, {"reason": exc.reason, "started": exc.started, "max_agents": exc.max_agents}]}
    if isinstance(exc, MailboxFull):
        return {"type": "MailboxFull", "msg": str(exc), "args": [exc.to, exc.capacity, exc.timeout_s]}
    if isinstance(exc, MailboxSend):
        return {"type": "MailboxSend", "msg": str(exc), "args": [exc.msg]}
    if isinstance(exc, MailboxTimeout):
        return {"type": "MailboxTimeout", "msg": str(exc), "args": [exc.agent]}
    return {"type": type(exc).__name__, "msg": str(exc), "args": []}


_PLAIN = {"TypeError": TypeError, "ValueError": ValueError, "RuntimeError": RuntimeError, "TimeoutError": TimeoutError}


def decode_error(err: dict[str, Any]) -> BaseException:
    """Inverse of :func:`encode_error` (unknown types become ``ToolError("{type}: {msg}")``)."""
    from ...errors import BudgetError, MailboxFull, MailboxSend, MailboxTimeout, ToolError, WireProtocolError

    t = err.get("type")
    args = err.get("args") or []
    msg = err.get("msg", "")
    try:
        if t == "BudgetError":
            return BudgetError(args[0], **args[1])
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
        return WireProtocolError("$", msg)
    if t in _PLAIN:
        return _PLAIN[t](msg)
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


# -- frames sized by bytes -----------------------------------------------------------------------------------------

#: Room kept in every frame for the envelope around its items, in bytes.
FRAME_OVERHEAD = 256


def one_frame(body: dict[str, Any], limit: int) -> bytes | None:
    """``body`` as the bytes of one frame, or ``None`` when orjson refuses it (a lone surrogate, a value
    that is not JSON) or it exceeds ``limit`` bytes: the sender then encodes its items one by one."""
    try:
        data = orjson.dumps(body)
    except TypeError:
        return None
    return data if len(data) <= limit else None


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


def split_batch(body: dict[str, Any], limit: int, fail_request: Any) -> list[bytes]:
    """Encode a worker's batch item by item: fail what cannot be sent, pack the rest into frames by bytes.

    Used when the batch as one frame is refused by orjson or exceeds ``limit``.
    Events go first, then requests, then results: the coordinator handles them
    in that order, so an agent's events still precede its result. A request
    that cannot be sent fails through ``fail_request(rid, why)``; a result that
    cannot be sent becomes an error result for that agent alone.
    """
    item_max = limit - FRAME_OVERHEAD
    frames: list[bytes] = []
    for i, recs in body.get("events", ()):
        parts = []
        for rec in recs:
            try:
                b = orjson.dumps(rec)
            except TypeError as exc:  # validated at append, so only a value mutated since
                b = orjson.dumps(dict(rec, data=f"<unserializable event data: {exc}>"))
            if len(b) > item_max:
                b = orjson.dumps(dict(rec, data=f"<event data dropped: {too_big('it', len(b), limit)}>"))
            parts.append(b)
        frames += pack_frames(b'{"t":"batch","events":[[%d,[' % i, b"]]]}", parts, limit)
    parts = []
    for q in body.get("requests", ()):
        try:
            b = orjson.dumps(q)
            problem = None if len(b) <= item_max else too_big("the request", len(b), limit)
        except TypeError:
            bad = find_unserializable(q.get("params", q.get("args")), "$.params") or ("$", "not JSON-serializable")
            problem = f"SerializationError: request cannot be sent to the coordinator: {bad[0]}: {bad[1]}"
        if problem is None:
            parts.append(b)
        else:
            fail_request(q["rid"], problem)
    frames += pack_frames(b'{"t":"batch","requests":[', b"]}", parts, limit)
    parts = [_encode_result(r, limit) for r in body.get("results", ())]
    frames += pack_frames(b'{"t":"batch","results":[', b"]}", parts, limit)
    return frames


def _encode_result(r: dict[str, Any], limit: int) -> bytes:
    """One result as JSON that fits a frame; else an error result for that agent alone."""
    item_max = limit - FRAME_OVERHEAD
    out = r.get("output")
    try:
        b = orjson.dumps(r)
    except TypeError:
        try:  # a str JSON cannot carry (lone surrogates): tag it
            b = orjson.dumps(dict(r, output=escape_strings(out))) if out is not None else orjson.dumps(r)
        except TypeError:
            named = dict(zip(OUTPUT_FIELDS, out or ()))
            bad = find_unserializable(named, "$.output") or ("$.output", "not JSON-serializable")
            r = {"id": r["id"], "output": None, "duration_ms": r["duration_ms"], "writes": r.get("writes"),
                 "error": f"SerializationError: agent '{named.get('name', '?')}' returned an output that cannot be "
                          f"sent to the coordinator: {bad[0]}: {bad[1]}"}
            b = orjson.dumps(r)
    if len(b) <= item_max:
        return b
    what = f"the result of agent '{out[0]}'" if out else "the agent's result"
    writes = r.get("writes")
    if writes:
        what += f" (with {len(writes)} state writes)"
    fail = {"id": r["id"], "output": None, "error": too_big(what, len(b), limit), "duration_ms": r["duration_ms"]}
    if writes:
        with_writes = orjson.dumps(dict(fail, writes=writes))
        if len(with_writes) <= item_max:
            return with_writes
    return orjson.dumps(fail)
