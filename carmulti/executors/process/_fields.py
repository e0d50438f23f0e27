"""Field checks of decoded wire frames (see :mod:`.wire`): each names what was wrong and where.

A failed check raises :class:`~carmulti.WireProtocolError` with the JSON path of the
field (``$.jobs[3].spec.name``) and what was expected; none builds its message or
path unless the check fails.
"""

from __future__ import annotations

from typing import Any

from ...errors import WireProtocolError
from .payloads import SURROGATE_TAG

_NUM = (int, float)
_TYPE_NAMES = {str: "str", int: "int", float: "number", bool: "bool", list: "list", dict: "object",
               type(None): "null"}
_MISSING = object()


def _tn(v: Any) -> str:
    return _TYPE_NAMES.get(type(v), type(v).__name__)


def _fail(path: str, msg: str) -> None:
    raise WireProtocolError(path, msg)


def _want(v: Any, typ: type | tuple[type, ...], path: str, what: str) -> None:
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, _NUM)):
        _fail(path, f"expected {what}, got {_tn(v)}")


def _field(d: dict[str, Any], key: str, path: str, typ: type, what: str) -> Any:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        _fail(f"{path}.{key}", "missing required field")
    if type(v) is not typ:
        _fail(f"{path}.{key}", f"expected {what}, got {_tn(v)}")
    return v


def _int(d: dict[str, Any], key: str, path: str) -> int:
    return _field(d, key, path, int, "int")  # type: ignore[no-any-return]


def _str(d: dict[str, Any], key: str, path: str) -> str:
    return _field(d, key, path, str, "str")  # type: ignore[no-any-return]


def _list(d: dict[str, Any], key: str, path: str) -> list[Any]:
    return _field(d, key, path, list, "list")  # type: ignore[no-any-return]


def _opt(d: dict[str, Any], key: str, typ: Any, path: str, what: str) -> None:
    v = d.get(key)
    if v is not None:
        _want(v, typ, f"{path}.{key}", what)


def _int_list(b: dict[str, Any], key: str, path: str = "$") -> None:
    v = b.get(key)
    if v is not None:
        _want(v, list, f"{path}.{key}", "list")
        for i, j in enumerate(v):
            _want(j, int, f"{path}.{key}[{i}]", "int")


def _trace(d: dict[str, Any], path: str) -> None:
    """An optional ``trace`` carrier: an object of str values (``{"traceparent": ..., "tracestate"?: ...}``)."""
    v = d.get("trace")
    if v is not None:
        _want(v, dict, f"{path}.trace", "object")
        for k, x in v.items():
            _want(x, str, f"{path}.trace.{k}", "str")


def _want_str(v: Any, path: str) -> None:
    """A str, or a str JSON cannot carry tagged ``{"$u": base64}`` (see ``payloads.escape_strings``)."""
    if type(v) is dict and len(v) == 1 and type(v.get(SURROGATE_TAG)) is str:
        return
    _want(v, str, path, "str")
