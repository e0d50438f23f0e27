# Shared code of state.pyx and eventlog.pyx, included textually by both (uvloop layout):
# every helper compiles into each module as a C function, so using one costs no
# Python-level call.  One rule set for JSON values (what StateStore.set stores and what
# EventLog.append logs) and one way to take a str argument.

from libc.math cimport isfinite
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

import orjson

_loads = orjson.loads
_dumps = orjson.dumps
# datetimes and dataclasses reach orjson's default (none), so they are refused rather
# than silently turned into strings/dicts
cdef int _DUMPS_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


cdef inline bytes _compact(bytes b):
    # orjson returns bytes backed by a ~4 KiB allocation; a value kept for long (store,
    # transition log, event) is copied into a right-sized object (pymalloc for small ones).
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if n >= 2048:
        return b
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(b), n)


cdef inline bint _plain_scalar(object v):
    # An exact str, bool or None, an int in [-2**63, 2**64) or a finite float: immutable
    # and equal to its JSON round trip, so it may be kept as is instead of encoded.
    cdef type t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int:
        return -9223372036854775808 <= v < 18446744073709551616
    if t is float:
        return isfinite(<double>v)
    return False


cdef inline object _not_json(str what, str name, str reason):
    # The TypeError for a refused value, e.g. "state value for key 'k' is not JSON-serializable: ..."
    return TypeError(f"{what} {name!r} is not JSON-serializable: {reason}")


cdef inline str _non_finite(object value):
    return f"non-finite float {value!r} has no JSON representation"


cdef bytes _dump(object value, str what, str name):
    # The (compacted) orjson encoding of value; a value orjson refuses raises
    # _not_json(what, name, orjson's reason).
    try:
        return _compact(_dumps(value, option=_DUMPS_OPTS))
    except TypeError as exc:  # orjson.JSONEncodeError subclasses TypeError
        raise _not_json(what, name, str(exc)) from None


cdef inline str _as_str(object v, str what, str expected):
    # v as an exact str (a str subclass is converted); anything else raises
    # TypeError "{what} must be {expected}, got {type}: {v!r}".
    if type(v) is str:
        return <str>v
    return _as_str_slow(v, what, expected)


cdef str _as_str_slow(object v, str what, str expected):
    if isinstance(v, str):
        return str.__str__(v)
    raise TypeError(f"{what} must be {expected}, got {type(v).__name__}: {v!r}")


cdef inline int _check_since(object since) except -1:
    # the start index of transitions(since) / events(since)
    if since < 0:
        raise ValueError(f"since must be >= 0, got {since}")
    return 0
