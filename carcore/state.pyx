# cython: language_level=3, embedsignature=True
"""Compiled key/value state with an ordered transition log and copy-on-write overlays.

Classes:
    StateStore: JSON key -> value map; every change appends a :class:`StateTransition`.
    Overlay: copy-on-write child of a store (or of another overlay). Reads fall through,
        writes and deletes stay local until :meth:`Overlay.merge_to_parent`.
    StateTransition: one recorded change (read-only).

Value representation:
    Exact-type scalars (``str``, ``int``, ``float``, ``bool``, ``None``) are stored as-is
    (they are immutable).  Everything else is encoded once with ``orjson.dumps`` and stored
    as ``bytes``; ``bytes`` is never a legal JSON value, so ``type(v) is bytes`` marks an
    encoded container.  Reads decode a fresh object, so callers may mutate what ``get``
    returns without changing the store.  Consequences of the JSON round trip:

    * tuples come back as lists, ``str``/``int``/``dict`` subclasses as the base type;
    * ints outside ``[-2**63, 2**64)`` and non-finite floats at the top level are rejected
      with ``TypeError`` (orjson cannot encode the former; JSON has no NaN/Infinity).
      Inside containers orjson encodes NaN/Infinity as ``null``;
    * ``datetime`` and dataclass values are rejected (``TypeError``) rather than silently
      turned into strings/dicts; ``uuid.UUID`` and ``enum`` members are encoded by orjson
      and read back as their JSON form.

Versions and conflicts:
    One process-global, strictly increasing version counter is bumped for every key
    touched by ``set``/``delete``/``apply``/``restore``/``replace_all``/merges (deleted
    keys included).  An overlay records its parent's version of a key the first time it
    reads (``get``/``exists``/``in``) or writes/deletes it; ``first_committer_wins``
    merges compare those base versions with the parent's current ones.  When a child
    overlay is merged into an overlay, the child's base versions for keys the parent had
    not touched are adopted by the parent, so a read deep in a nested overlay is still
    checked when the chain is finally merged into the store.
"""

cimport cython
from libc.stdint cimport int64_t

from carcore.includes.system cimport realtime_ns

import datetime as _dt

from carcore.errors import MergeConflictError

include "_common.pxi"

cdef object _MISSING = object()
cdef object _EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
cdef object _timedelta = _dt.timedelta
cdef tuple _POLICIES = ("first_committer_wins", "last_writer_wins")

cdef int64_t _VERSION = 0


cdef inline int64_t _next_version() noexcept:
    global _VERSION
    _VERSION += 1
    return _VERSION


cdef inline object _decode(object stored):
    if type(stored) is bytes:
        return _loads(stored)
    return stored


cdef inline object _decode_or_none(object stored):
    if stored is _MISSING:
        return None
    return _decode(stored)


cdef inline str _check_key(object key):
    return _as_str(key, "state key", "str")


cdef inline str _check_writer(object writer):
    if writer is None:
        return ""
    return _as_str(writer, "writer", "str")


cdef object _encode(str key, object value):
    # The stored form of a state value: a plain scalar as is, anything else its orjson
    # encoding.  The one JSON check of state values (set, apply, restore, check_json_value).
    if _plain_scalar(value):
        return value
    cdef type t = type(value)
    if t is int:
        raise _not_json("state value for key", key, f"integer {value} exceeds the 64-bit range")
    if t is float:
        raise _not_json("state value for key", key, _non_finite(value))
    return _dump(value, "state value for key", key)


def check_json_value(value, key):
    """Check ``value`` as :meth:`StateStore.set` checks a state value; return its JSON.

    For callers that validate a state value away from a store (e.g. in a worker
    process) and ship the encoding: the rules and the error messages are those of
    ``StateStore.set`` (the same compiled check), see the module docstring.

    Args:
        value (Any): The candidate state value.
        key (str): The key it is meant for (named in the error message).

    Returns:
        bytes: The orjson encoding of ``value`` (decoding it gives what
        ``StateStore.get`` would return after ``set(key, value)``).

    Raises:
        TypeError: ``key`` is not a ``str`` (as ``StateStore.set``: "state key must be
            str, ..."), or ``value`` is not JSON-serializable: "state value for key
            {key!r} is not JSON-serializable: {reason}" (non-finite float, integer
            outside 64 bits, datetime, dataclass, non-str dict key, ...).  Unlike
            ``StateStore.set``, which keeps a top-level ``str`` as is, a ``str`` that
            orjson cannot encode (lone surrogates) is refused too.
    """
    cdef str k = _check_key(key)
    cdef object stored = _encode(k, value)
    if type(stored) is bytes:
        return stored
    return _dump(stored, "state value for key", k)


cdef dict _encode_mapping(object mapping, str what):
    cdef dict out = {}
    cdef str k
    if not hasattr(mapping, "items"):
        raise TypeError(f"{what} must be a mapping of str to JSON values, got {type(mapping).__name__}")
    for key, value in mapping.items():
        k = _check_key(key)
        out[k] = _encode(k, value)
    return out


cdef StateTransition _transition(str key, object old, object new, str writer, int64_t ts_ns,
                                 list log):
    # a new transition, appended to log when one is given
    cdef StateTransition t = StateTransition.__new__(StateTransition)
    t.key = key
    t._old = old
    t._new = new
    t.writer = writer
    t.ts_ns = ts_ns
    if log is not None:
        log.append(t)
    return t


def _transition_from_state(str key, bint had_old, object old, bint has_new, object new,
                           str writer, int64_t ts_ns):
    """Unpickle helper for :class:`StateTransition` (values are stored forms)."""
    return _transition(key, old if had_old else _MISSING, new if has_new else _MISSING,
                       writer, ts_ns, None)


@cython.no_gc  # holds only str/int/float/bool/None/bytes (stored forms): cannot be in a cycle
cdef class StateTransition:
    """One recorded change of a key (read-only).

    Attributes:
        key (str): The key that changed.
        old_value (Any): Decoded copy of the value before the change; ``None`` when the
            key was absent.
        new_value (Any): Decoded copy of the value after the change; ``None`` when the
            change was a delete.
        writer (str): Who made the change (an action id, or an overlay name for merges).
        action_id (str): Alias of ``writer``.
        ts_ns (int): Wall-clock time of the change, nanoseconds since the Unix epoch.
        timestamp (datetime.datetime): ``ts_ns`` as a timezone-aware UTC datetime
            (microsecond resolution).
        was_present (bool): Whether the key existed before the change.
        is_delete (bool): Whether the change removed the key.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("StateTransition objects are created by StateStore and Overlay only")

    @property
    def old_value(self):
        return _decode_or_none(self._old)

    @property
    def new_value(self):
        return _decode_or_none(self._new)

    @property
    def action_id(self):
        return self.writer

    @property
    def was_present(self):
        return self._old is not _MISSING

    @property
    def is_delete(self):
        return self._new is _MISSING

    @property
    def timestamp(self):
        return _EPOCH + _timedelta(microseconds=self.ts_ns // 1000)

    def to_dict(self):
        """Return a JSON-friendly dict of this transition.

        Returns:
            dict: ``{"key", "old_value", "new_value", "writer", "action_id", "ts_ns",
            "timestamp"}``; values are fresh decoded copies and ``timestamp`` is an
            ISO-8601 string in UTC.
        """
        return {
            "key": self.key,
            "old_value": _decode_or_none(self._old),
            "new_value": _decode_or_none(self._new),
            "writer": self.writer,
            "action_id": self.writer,
            "ts_ns": self.ts_ns,
            "timestamp": self.timestamp.isoformat(),
        }

    def __repr__(self):
        return (
            f"StateTransition(key={self.key!r}, old_value={self.old_value!r}, "
            f"new_value={self.new_value!r}, writer={self.writer!r}, ts_ns={self.ts_ns})"
        )

    def __eq__(self, other):
        if not isinstance(other, StateTransition):
            return NotImplemented
        cdef StateTransition o = <StateTransition>other
        return (
            self.key == o.key and self.writer == o.writer and self.ts_ns == o.ts_ns
            and (self._old is _MISSING) == (o._old is _MISSING)
            and (self._new is _MISSING) == (o._new is _MISSING)
            and self.old_value == o.old_value and self.new_value == o.new_value
        )

    __hash__ = None

    def __reduce__(self):
        cdef bint had_old = self._old is not _MISSING
        cdef bint has_new = self._new is not _MISSING
        return (_transition_from_state, (self.key, had_old, self._old if had_old else None,
                                         has_new, self._new if has_new else None,
                                         self.writer, self.ts_ns))


cdef class _StateView:
    """Private base of StateStore and Overlay (shared C-level protocol)."""

    cdef object _raw(self, str key, bint track):
        raise NotImplementedError

    cdef int64_t _view_version(self, str key):
        raise NotImplementedError

    cdef list _key_list(self):
        raise NotImplementedError

    cdef StateTransition _set_stored(self, str key, object stored, str writer, int64_t ts):
        raise NotImplementedError

    cdef StateTransition _delete_stored(self, str key, str writer, int64_t ts, bint merging):
        raise NotImplementedError

    cdef void _adopt_bases(self, dict bases):
        pass

    cdef list _apply_stored(self, dict sets, list deletes, str writer):
        # Sets then deletes of already-validated (stored-form) values, all at one time.
        cdef int64_t ts = realtime_ns()
        cdef list out = []
        cdef StateTransition t
        cdef str k
        for k, v in sets.items():
            out.append(self._set_stored(k, v, writer, ts))
        for k in deletes:
            t = self._delete_stored(k, writer, ts, True)
            if t is not None:
                out.append(t)
        return out

    cdef StateTransition _set(self, object key, object value, object writer):
        # set(): validate everything first, so a refused key, writer or value stores nothing
        cdef str k = _check_key(key)
        cdef str w = _check_writer(writer)
        return self._set_stored(k, _encode(k, value), w, realtime_ns())

    cdef StateTransition _delete(self, object key, object writer):
        cdef str k = _check_key(key)
        cdef str w = _check_writer(writer)
        return self._delete_stored(k, w, realtime_ns(), False)

    # ----- shared batch write --------------------------------------------------------

    def set_many(self, keys, values, writers):
        """Set ``values[i]`` under ``keys[i]`` by ``writers[i]``, in order, all at one time.

        The batch form of ``set`` (what a pattern's round does when it publishes
        many answers): the same transitions, in the same order, as calling
        ``set(keys[i], values[i], writers[i])`` for each ``i`` in turn, except that
        they share one timestamp, and that everything is validated before anything
        changes (all or nothing, as :meth:`StateStore.apply`).

        Args:
            keys (Sequence[str]): The keys (one may repeat: the later write wins).
            values (Sequence[Any]): JSON-serializable values, one per key.
            writers (Sequence[str]): Who writes each (``None`` is treated as ``""``).

        Returns:
            list[StateTransition]: The recorded changes, one per key, in order.

        Raises:
            ValueError: the three sequences differ in length (the message gives the
                lengths); nothing is stored.
            TypeError: a key or writer is not a ``str``, or a value is not
                JSON-serializable (the message names the key); nothing is stored.
        """
        cdef list ks = keys if type(keys) is list else list(keys)
        cdef list vs = values if type(values) is list else list(values)
        cdef list ws = writers if type(writers) is list else list(writers)
        cdef Py_ssize_t n = len(ks), i
        if len(vs) != n or len(ws) != n:
            raise ValueError(f"set_many needs as many values and writers as keys, "
                             f"got {n} keys, {len(vs)} values, {len(ws)} writers")
        cdef list ck = [None] * n
        cdef list cs = [None] * n
        cdef list cw = [None] * n
        cdef str k
        for i in range(n):
            k = _check_key(ks[i])
            ck[i] = k
            cs[i] = _encode(k, vs[i])
            cw[i] = _check_writer(ws[i])
        cdef int64_t ts = realtime_ns()
        cdef list out = [None] * n
        for i in range(n):
            out[i] = self._set_stored(<str>ck[i], cs[i], <str>cw[i], ts)
        return out

    # ----- shared read API -------------------------------------------------------------

    def get(self, key, default=None):
        """Return a fresh copy of the value stored under ``key``.

        Args:
            key (str): The key.
            default (Any): Returned (as given, not copied) when the key is absent.

        Returns:
            Any: An equal copy of the stored value; mutating it does not change the store.

        Raises:
            TypeError: ``key`` is not a ``str``.
        """
        cdef object v = self._raw(_check_key(key), True)
        if v is _MISSING:
            return default
        return _decode(v)

    def exists(self, key):
        """Return whether ``key`` is present (counts as a read for overlays).

        Raises:
            TypeError: ``key`` is not a ``str``.
        """
        return self._raw(_check_key(key), True) is not _MISSING

    def __contains__(self, key):
        return self._raw(_check_key(key), True) is not _MISSING

    def keys(self):
        """Return the present keys as a new ``list[str]`` in insertion order."""
        return self._key_list()

    def __len__(self):
        return len(self._key_list())

    def __iter__(self):
        return iter(self._key_list())

    def transitions(self, since=0):
        """Return the recorded transitions with index >= ``since`` as a new list.

        A store's are every change; an overlay's are its local changes (kept across
        merges).

        Raises:
            ValueError: ``since`` is negative.
        """
        _check_since(since)
        return self._log[since:]

    def snapshot(self):
        """Return a deep copy of the whole (visible) map as a ``dict``.

        Does not count as a read for conflict detection.
        """
        cdef dict out = {}
        cdef str k
        for k in self._key_list():
            out[k] = _decode(self._raw(k, False))
        return out

    def overlay(self, name):
        """Create a copy-on-write child :class:`Overlay` of this view.

        Args:
            name (str): The overlay's name; used as ``writer`` when it is merged.

        Returns:
            Overlay: A new, empty overlay whose ``parent`` is this object.

        Raises:
            TypeError: ``name`` is not a ``str``.
        """
        return Overlay(self, name)


cdef class StateStore(_StateView):
    """JSON key -> value map with an ordered log of :class:`StateTransition`.

    Keys are ``str``; values must be JSON-serializable (see the module docstring for the
    exact rules).  Not thread-safe beyond what the GIL gives: each method is atomic with
    respect to other Python threads because it never releases the GIL.
    """

    def __cinit__(self):
        self._data = {}
        self._versions = {}
        self._log = []

    def __init__(self):
        pass

    def __repr__(self):
        return f"<StateStore keys={len(self._data)} transitions={len(self._log)}>"

    cdef object _raw(self, str key, bint track):
        return self._data.get(key, _MISSING)

    cdef int64_t _view_version(self, str key):
        return self._versions.get(key, 0)

    cdef list _key_list(self):
        return list(self._data)

    cdef StateTransition _set_stored(self, str key, object stored, str writer, int64_t ts):
        cdef object old = self._data.get(key, _MISSING)
        self._data[key] = stored
        self._versions[key] = _next_version()
        return _transition(key, old, stored, writer, ts, self._log)

    cdef StateTransition _delete_stored(self, str key, str writer, int64_t ts, bint merging):
        # an absent key: no version bump, no transition (from delete and from merges alike)
        cdef object old = self._data.pop(key, _MISSING)
        if old is _MISSING:
            return None
        self._versions[key] = _next_version()
        return _transition(key, old, _MISSING, writer, ts, self._log)

    def __len__(self):
        return len(self._data)

    def set(self, key, value, writer=""):
        """Store ``value`` under ``key`` and record a transition.

        Args:
            key (str): The key.
            value (Any): A JSON-serializable value (encoded once; later mutation of the
                caller's object does not affect the store).
            writer (str): Who is writing (an action id); ``None`` is treated as ``""``.

        Returns:
            StateTransition: The recorded change.

        Raises:
            TypeError: ``key`` or ``writer`` is not a ``str``, or ``value`` is not
                JSON-serializable (the message names the key); nothing is stored.
        """
        return self._set(key, value, writer)

    def delete(self, key, writer=""):
        """Remove ``key``.

        Args:
            key (str): The key.
            writer (str): Who is deleting.

        Returns:
            StateTransition | None: The recorded change, or ``None`` when the key was
            absent (then nothing is recorded).

        Raises:
            TypeError: ``key`` or ``writer`` is not a ``str``.
        """
        return self._delete(key, writer)

    def apply(self, sets, deletes=(), writer=""):
        """Atomically apply many sets, then many deletes (all or nothing).

        Everything is validated before anything changes, so an invalid key or value
        leaves the store untouched.  Used to apply an overlay's changes shipped from
        another process.

        Args:
            sets (Mapping[str, Any]): Keys to set.
            deletes (Iterable[str]): Keys to delete after the sets; absent keys are
                skipped without a transition.
            writer (str): Recorded on every transition.

        Returns:
            list[StateTransition]: The recorded changes, sets first then deletes.

        Raises:
            TypeError: a key is not a ``str``, a value is not JSON-serializable (message
                names the key), ``sets`` is not a mapping, or ``writer`` is not a ``str``.
        """
        cdef str w = _check_writer(writer)
        cdef dict enc = _encode_mapping(sets, "sets")
        cdef list dels = [_check_key(k) for k in deletes]
        return self._apply_stored(enc, dels, w)

    def restore(self, snapshot, transition_count):
        """Replace the map with ``snapshot`` and truncate the transition log.

        Args:
            snapshot (dict[str, Any]): The new contents (e.g. from :meth:`snapshot`).
            transition_count (int): Keep only the first ``transition_count`` transitions.

        Raises:
            ValueError: ``transition_count`` is negative or larger than
                :meth:`transition_count`.
            TypeError: a key is not a ``str`` or a value is not JSON-serializable.
        """
        cdef Py_ssize_t n = transition_count
        if n < 0 or n > len(self._log):
            raise ValueError(
                f"transition_count must be between 0 and the current count "
                f"{len(self._log)}, got {n}"
            )
        cdef dict enc = _encode_mapping(snapshot, "snapshot")
        self._replace(enc)
        del self._log[n:]

    def replace_all(self, snapshot):
        """Replace the map with ``snapshot`` without recording transitions; clear the log.

        Args:
            snapshot (dict[str, Any]): The new contents.

        Raises:
            TypeError: a key is not a ``str`` or a value is not JSON-serializable.
        """
        cdef dict enc = _encode_mapping(snapshot, "snapshot")
        self._replace(enc)
        self._log.clear()

    cdef void _replace(self, dict enc):
        cdef str k
        for k in self._data:
            self._versions[k] = _next_version()
        for k in enc:
            self._versions[k] = _next_version()
        self._data = enc

    def transition_count(self):
        """Return the number of recorded transitions."""
        return len(self._log)


cdef class Overlay(_StateView):
    """Copy-on-write child of a :class:`StateStore` or of another :class:`Overlay`.

    Reads fall through to the parent (a local write wins; a local delete is a tombstone
    that hides the parent's key).  Writes and deletes stay local until
    :meth:`merge_to_parent`.  The first read (``get``/``exists``/``in``) or write/delete of
    a key records the parent's current version of it (its base version).

    Attributes:
        name (str): The overlay's name (the ``writer`` of merged transitions).
        parent (StateStore | Overlay): The view this overlay falls through to.
    """

    def __init__(self, parent, name):
        """Create an overlay; prefer ``parent.overlay(name)``.

        Raises:
            TypeError: ``parent`` is not a StateStore/Overlay or ``name`` is not a ``str``.
        """
        if not isinstance(parent, _StateView):
            raise TypeError(f"overlay parent must be a StateStore or Overlay, got {type(parent).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"overlay name must be str, got {type(name).__name__}: {name!r}")
        self.parent = <_StateView>parent
        self.name = str.__str__(name)
        self._local = {}
        self._tombs = {}
        self._base = {}
        self._lversions = {}
        self._log = []

    def __repr__(self):
        return (
            f"<Overlay {self.name!r} sets={len(self._local)} deletes={len(self._tombs)} "
            f"parent={type(self.parent).__name__}>"
        )

    cdef void _touch(self, str key):
        if key not in self._base:
            self._base[key] = self.parent._view_version(key)

    cdef object _visible(self, str key):
        cdef object v = self._local.get(key, _MISSING)
        if v is not _MISSING:
            return v
        if key in self._tombs:
            return _MISSING
        return self.parent._raw(key, False)

    cdef object _raw(self, str key, bint track):
        if track:
            self._touch(key)
        return self._visible(key)

    cdef int64_t _view_version(self, str key):
        if key in self._local or key in self._tombs:
            return self._lversions[key]
        cdef object lv = self._lversions.get(key)
        cdef int64_t pv = self.parent._view_version(key)
        if lv is not None and pv == self._base.get(key, -1):
            return lv  # pinned: merged to the parent and unchanged there since
        return pv

    cdef list _key_list(self):
        cdef list pk = self.parent._key_list()
        cdef dict tombs = self._tombs
        cdef list out
        if tombs:
            out = [k for k in pk if k not in tombs]
        else:
            out = pk
        if self._local:
            pset = set(pk)
            out.extend([k for k in self._local if k not in pset])
        return out

    cdef void _adopt_bases(self, dict bases):
        for k, v in bases.items():
            if k not in self._base:
                self._base[k] = v

    cdef StateTransition _set_stored(self, str key, object stored, str writer, int64_t ts):
        self._touch(key)
        cdef object old = self._visible(key)
        self._local[key] = stored
        self._tombs.pop(key, None)
        self._lversions[key] = _next_version()
        return _transition(key, old, stored, writer, ts, self._log)

    cdef StateTransition _delete_stored(self, str key, str writer, int64_t ts, bint merging):
        # delete() of a key that is not visible here is a no-op (the key only counts as
        # touched); a merged child's tombstone is kept (and versioned) even then, without
        # a transition.
        self._touch(key)
        cdef object old = self._visible(key)
        if old is _MISSING and not merging:
            return None
        self._local.pop(key, None)
        self._tombs[key] = None
        self._lversions[key] = _next_version()
        if old is _MISSING:
            return None
        return _transition(key, old, _MISSING, writer, ts, self._log)

    def set(self, key, value, writer=""):
        """Set ``key`` locally (invisible to the parent until merged).

        Args:
            key (str): The key.
            value (Any): A JSON-serializable value.
            writer (str): Who is writing.

        Returns:
            StateTransition: The local change (``old_value`` is the previously visible value).

        Raises:
            TypeError: as :meth:`StateStore.set`; nothing is stored.
        """
        return self._set(key, value, writer)

    def delete(self, key, writer=""):
        """Delete ``key`` locally (a tombstone hides the parent's key).

        Returns:
            StateTransition | None: The local change, or ``None`` when the key was not
            visible (nothing is recorded, but the key counts as touched).

        Raises:
            TypeError: ``key`` or ``writer`` is not a ``str``.
        """
        return self._delete(key, writer)

    def is_local(self, key):
        """Whether ``key`` has a local (unmerged) set or delete in this overlay.

        Raises:
            TypeError: ``key`` is not a ``str``.
        """
        cdef str k = _check_key(key)
        return k in self._local or k in self._tombs

    def revert(self, key, writer=""):
        """Drop the local set or delete of ``key`` so the parent's value shows through again.

        Unlike :meth:`delete`, this leaves no tombstone: merging afterwards does
        not touch the parent's ``key``. The key stays tracked for conflict
        detection (it was touched).

        Returns:
            StateTransition | None: The local change (from the local value to the
            parent's), or ``None`` when ``key`` had no local change.

        Raises:
            TypeError: ``key`` or ``writer`` is not a ``str``.
        """
        cdef str k = _check_key(key)
        cdef str w = _check_writer(writer)
        if k not in self._local and k not in self._tombs:
            return None
        cdef object old = self._visible(k)
        self._local.pop(k, None)
        self._tombs.pop(k, None)
        self._lversions.pop(k, None)
        return _transition(k, old, self._visible(k), w, realtime_ns(), self._log)


    def changes(self):
        """Return copies of the pending local changes.

        Returns:
            tuple[dict[str, Any], list[str]]: ``(sets, deletes)``; ``sets`` maps each
            locally written key to a fresh copy of its value, ``deletes`` lists the
            locally deleted keys in deletion order.  Suitable for ``StateStore.apply``.
        """
        return ({k: _decode(v) for k, v in self._local.items()}, list(self._tombs))

    @property
    def has_changes(self):
        """bool: whether there are local sets or deletes not yet merged."""
        return bool(self._local) or bool(self._tombs)

    def discard(self):
        """Drop every local change and forget the recorded base versions.

        The local transition log is cleared too; the parent is not touched.
        """
        self._local.clear()
        self._tombs.clear()
        self._base.clear()
        self._lversions.clear()
        self._log.clear()

    def merge_to_parent(self, policy="last_writer_wins"):
        """Apply the local sets then deletes to the parent atomically.

        Transitions in the parent get ``writer`` = this overlay's name.  Afterwards the
        local changes are cleared and base versions re-recorded from the parent, so a
        second merge applies nothing new.

        Args:
            policy (str): ``"last_writer_wins"`` (apply regardless of what changed in the
                parent) or ``"first_committer_wins"`` (refuse if any key this overlay
                read or wrote changed in the parent since it was first touched).

        Returns:
            list[StateTransition]: The transitions recorded in the parent.

        Raises:
            MergeConflictError: policy ``"first_committer_wins"`` and at least one
                conflicting key (all of them are listed); nothing was applied and the
                overlay keeps its changes.
            ValueError: unknown ``policy``.
        """
        if policy not in _POLICIES:
            raise ValueError(
                f"unknown merge policy {policy!r}; valid policies: "
                + ", ".join(repr(p) for p in _POLICIES)
            )
        cdef _StateView parent = self.parent
        cdef list conflicts
        if policy == "first_committer_wins":
            conflicts = [k for k, base in self._base.items() if parent._view_version(k) != base]
            if conflicts:
                raise MergeConflictError(conflicts, self.name)
        parent._adopt_bases(self._base)
        cdef list merged = list(self._local) + list(self._tombs)
        cdef list out = parent._apply_stored(self._local, list(self._tombs), self.name)
        cdef dict pins = {k: self._lversions[k] for k in merged}
        self._local = {}
        self._tombs = {}
        self._lversions = pins
        for k in self._base:
            self._base[k] = parent._view_version(k)
        return out
