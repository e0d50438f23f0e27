"""Checks of the items that the process executor's frames carry, for :func:`.wire.decode`.

Job specs and jobs (``jobs``, a ``fan`` frame's mailbox), replies (``ret``, ``rret``), wire outputs,
state writes, results and requests (``batch``). Each raises :class:`~carmulti.WireProtocolError`
naming the rule and the ``$.path`` of the offending field; the kind validators that call them, and
the kinds themselves, are in :mod:`.wire`.
"""

from __future__ import annotations

from typing import Any

from ._fields import _MISSING, _NUM, _fail, _int, _list, _opt, _str, _tn, _trace, _want, _want_str
from .payloads import OUTPUT_FIELDS

__all__ = ["check_job", "check_mailbox", "check_reply", "check_request", "check_result"]


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


def check_job(j: Any, i: int) -> None:
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
        check_mailbox(j, path)


def check_mailbox(j: dict[str, Any], path: str) -> None:
    """An optional ``mailbox`` descriptor of a job (or of every job of a ``fan`` frame)."""
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


def check_reply(r: Any, path: str) -> None:
    if type(r) is not dict:
        _fail(path, f"expected object, got {_tn(r)}")
    _int(r, "rid", path)
    if "ok" not in r:
        err = r.get("err", _MISSING)
        if err is _MISSING:
            _fail(path, "a reply needs 'ok' or 'err'")
        _want(err, dict, f"{path}.err", "object")
        _str(err, "type", f"{path}.err")


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


def check_result(r: Any, i: int) -> None:
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


def check_request(q: Any, path: str) -> None:
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
