# cython: language_level=3, embedsignature=True
"""Compiled append-only event log with an optional crash-safe journal file.

Classes:
    EventLog: dense, 0-based sequence numbers; records kept in one contiguous in-memory
        buffer (record JSON bytes + a C array of offsets); :class:`Event` objects are
        materialized on read.
    Event: one record (read-only).
    RecoveryReport: what :meth:`EventLog.open` found and repaired.
    Subscription: a live cursor over a log (:meth:`EventLog.subscribe`).

Journal format (UTF-8 text, one record per line)::

    <crc32> <json>\\n

* ``<crc32>``: CRC-32 (zlib polynomial) of the ``<json>`` bytes, as exactly 8 lowercase
  hex digits;
* one space;
* ``<json>``: an orjson-encoded object with exactly the keys ``seq`` (int, dense from
  0), ``ts_ns`` (int, ns since the Unix epoch), ``kind`` (str), ``agent``, ``action_id``,
  ``proposal_id`` (str or null) and ``data`` (any JSON value);
* ``\\n``.

JSON never contains a raw newline, so a newline ends a record.  A journal is created with
mode 0600 (read/write for its owner only: event data may hold prompts, answers and tool
arguments); an existing file keeps its mode.

Event data:
    Validated as ``StateStore.set`` validates a state value: a non-finite float
    (NaN, +-inf), an int outside ``[-2**63, 2**64)``, a ``datetime``, a dataclass or
    anything else orjson cannot encode raises ``TypeError`` naming the event kind, and
    nothing is appended.  As for state values, tuples read back as lists and NaN/inf
    *inside* a container are written as ``null``.

Durability:
    Every append is handed to the OS with write(2) before ``append`` returns, so it
    survives a crash of the *process* under every policy.  Surviving a crash of the
    *machine* depends on ``fsync``:

    * ``"always"``: fdatasync(2) after every append (slow, strongest);
    * ``"batch"`` (default): group commit -- fdatasync when ``batch_records`` appends or
      ``batch_interval_s`` seconds have accumulated since the last sync (checked at
      append time), and on :meth:`EventLog.flush` / :meth:`EventLog.close`;
    * ``"never"``: never fsync (the OS writes back when it likes).

    The GIL is released during fdatasync.

Recovery (:meth:`EventLog.open`):
    The journal is read and verified front to back.  At the first damaged record (bad
    CRC, bad JSON, wrong fields, missing newline, or a non-dense ``seq``):

    * if the damage is confined to the final line (a write cut short: no newline, or a
      bad checksum on the very last record), it is a torn tail: the file is truncated to
      the end of the last good record, appending continues after it, and the repair is
      reported in ``log.recovery`` and logged on the ``carcore.eventlog`` logger;
    * otherwise -- more lines follow the damage, or a complete, checksummed record has
      the wrong ``seq`` (a duplicated or misplaced record is not a torn write) --
      :class:`carcore.errors.LogCorruptedError` is raised with the byte offset of the
      first bad record.  Damage is never skipped silently.

Subscriptions (:meth:`EventLog.subscribe`):
    A subscription is a cursor, not a queue: the log already keeps every event in
    memory, so appending never blocks, never copies an event per subscriber and costs
    one length check of the (usually empty) list of waiting subscriptions.  A
    subscription yields the events after its cursor, then waits for the next append.
    When more than ``maxsize`` events lie between its cursor and the log's end, it
    yields one ``gap`` event naming the skipped range and continues ``maxsize`` events
    before the end.  :meth:`EventLog.close` ends every subscription once it has yielded
    the events it had not seen yet.

Writers:
    A journal has exactly one writer: ``EventLog(path)`` and ``EventLog.open(path)``
    take an exclusive ``flock`` on the file (released on close or process death) and
    raise ``BlockingIOError`` when another EventLog, in this or another process, holds it.
"""

cimport cython
from libc.stdint cimport int64_t
from libc.stdlib cimport realloc, free

from carcore.includes cimport system
from carcore.includes.system cimport realtime_ns, monotonic_ns

import asyncio
import errno
import fcntl
import logging
import os
import re
import zlib

import orjson

from carcore.errors import LogCorruptedError

include "_common.pxi"

_crc32 = zlib.crc32

_logger = logging.getLogger("carcore.eventlog")

cdef object _LAZY = object()
cdef tuple _POLICIES = ("always", "batch", "never")
cdef frozenset _FIELDS = frozenset(("seq", "ts_ns", "kind", "agent", "action_id", "proposal_id", "data"))
cdef frozenset _BATCH_KEYS = frozenset(("kind", "data", "agent", "action_id", "proposal_id", "ts_ns"))
_HEX = frozenset(b"0123456789abcdef")
_running_loop = asyncio._get_running_loop  # the running loop or None (C function)
_CANDIDATE = re.compile(rb"[0-9a-f]{8} \{")


cdef inline object _check_opt_str(object v, str name):
    if v is None:
        return None
    return _as_str(v, name, "str or None")


cdef inline str _check_kind(object kind):
    return _as_str(kind, "event kind", "str")


cdef bytes _encode_record(int64_t seq, int64_t ts_ns, str kind, object agent,
                          object action_id, object proposal_id, object data):
    # Same rule as StateStore.set: a non-finite float has no JSON form. orjson would
    # write it as null (data is nested in the record), silently changing the value.
    if type(data) is float and not isfinite(<double>data):
        raise _not_json("event data for kind", kind, _non_finite(data)
                        + f" (log None or a string such as {str(data)!r} instead)")
    return _dump(
        {
            "seq": seq,
            "ts_ns": ts_ns,
            "kind": kind,
            "agent": agent,
            "action_id": action_id,
            "proposal_id": proposal_id,
            "data": data,
        },
        "event data for kind", kind,
    )


cdef inline bytes _frame(bytes j):
    return b"%08x " % _crc32(j) + j + b"\n"


cdef Event _fill_event(Event e, int64_t seq, int64_t ts_ns, str kind, object agent,
                       object action_id, object proposal_id, object data, bytes raw):
    e.seq = seq
    e.ts_ns = ts_ns
    e.kind = kind
    e.agent = agent
    e.action_id = action_id
    e.proposal_id = proposal_id
    e._data = data if _plain_scalar(data) else _LAZY  # an immutable scalar is cached
    e._raw = raw
    return e


cdef inline Event _make_event(int64_t seq, int64_t ts_ns, str kind, object agent, object action_id,
                              object proposal_id, object data, bytes raw):
    return _fill_event(Event.__new__(Event), seq, ts_ns, kind, agent, action_id, proposal_id,
                       data, raw)


cdef Event _event_from_dict(dict d, bytes raw):
    return _make_event(d["seq"], d["ts_ns"], d["kind"], d["agent"], d["action_id"],
                       d["proposal_id"], d["data"], raw)


def _event_from_json(bytes raw):
    """Unpickle helper: rebuild an :class:`Event` from its record JSON."""
    return _event_from_dict(_loads(raw), raw)


@cython.no_gc  # holds only str/int/None, bytes and a cached immutable scalar: cannot be in a cycle
cdef class Event:
    """One event-log record (read-only).

    Attributes:
        seq (int): Dense sequence number, starting at 0.
        ts_ns (int): Wall-clock append time, nanoseconds since the Unix epoch.
        kind (str): Event kind.
        agent (str | None): Agent id, if any.
        action_id (str | None): Action id, if any.
        proposal_id (str | None): Proposal id, if any.
        data (Any): The payload, decoded from JSON into a fresh object on each access
            (immutable scalars are cached); mutating it never affects the log.
    """

    def __init__(self, seq, ts_ns, kind, data=None, *, agent=None, action_id=None,
                 proposal_id=None):
        """Build a free-standing event (logs create their own; this is for tests/tools).

        Raises:
            TypeError: wrong field types, or ``data`` is not JSON-serializable.
        """
        cdef str k = _check_kind(kind)
        agent = _check_opt_str(agent, "agent")
        action_id = _check_opt_str(action_id, "action_id")
        proposal_id = _check_opt_str(proposal_id, "proposal_id")
        cdef bytes raw = _encode_record(seq, ts_ns, k, agent, action_id, proposal_id, data)
        _fill_event(self, seq, ts_ns, k, agent, action_id, proposal_id, data, raw)

    @property
    def data(self):
        if self._data is _LAZY:
            return _loads(self._raw)["data"]
        return self._data

    def to_dict(self):
        """Return ``{"seq", "ts_ns", "kind", "agent", "action_id", "proposal_id", "data"}``.

        ``data`` is a fresh copy.
        """
        return {
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "kind": self.kind,
            "agent": self.agent,
            "action_id": self.action_id,
            "proposal_id": self.proposal_id,
            "data": self.data,
        }

    def __repr__(self):
        return (
            f"Event(seq={self.seq}, ts_ns={self.ts_ns}, kind={self.kind!r}, agent={self.agent!r}, "
            f"action_id={self.action_id!r}, proposal_id={self.proposal_id!r}, data={self.data!r})"
        )

    def __eq__(self, other):
        if not isinstance(other, Event):
            return NotImplemented
        cdef Event o = <Event>other
        return (
            self.seq == o.seq and self.ts_ns == o.ts_ns and self.kind == o.kind
            and self.agent == o.agent and self.action_id == o.action_id
            and self.proposal_id == o.proposal_id and self.data == o.data
        )

    __hash__ = None

    def __reduce__(self):
        return (_event_from_json, (self._raw,))


cdef class RecoveryReport:
    """What :meth:`EventLog.open` recovered.

    Attributes:
        records (int): Number of valid records recovered.
        truncated_bytes (int): Bytes cut off the end of the file (0 if none).
        torn_offset (int | None): Byte offset where the torn tail started (the new file
            size), or ``None`` when the journal was clean.
    """

    def __init__(self, records, truncated_bytes, torn_offset):
        self.records = records
        self.truncated_bytes = truncated_bytes
        self.torn_offset = torn_offset

    def __repr__(self):
        return (
            f"RecoveryReport(records={self.records}, truncated_bytes={self.truncated_bytes}, "
            f"torn_offset={self.torn_offset!r})"
        )

    def __eq__(self, other):
        if not isinstance(other, RecoveryReport):
            return NotImplemented
        cdef RecoveryReport o = <RecoveryReport>other
        return (self.records, self.truncated_bytes, self.torn_offset) == (
            o.records, o.truncated_bytes, o.torn_offset)

    __hash__ = None

    def __reduce__(self):
        return (RecoveryReport, (self.records, self.truncated_bytes, self.torn_offset))


cdef object _check_line(bytes line, object expected_seq):
    """Return ``(dict, None)`` for a valid record line (without newline), else ``(None, reason)``.

    ``expected_seq`` None skips the sequence check.
    """
    cdef Py_ssize_t n = len(line)
    if n < 11 or line[8] != 0x20 or not _HEX.issuperset(line[:8]):
        return None, "malformed record header (expected 8 lowercase hex digits of CRC-32 and a space)"
    j = line[9:]
    stored = int(line[:8], 16)
    computed = _crc32(j)
    if stored != computed:
        return None, f"CRC-32 mismatch (stored {stored:08x}, computed {computed:08x})"
    try:
        d = _loads(j)
    except orjson.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc}"
    if type(d) is not dict or frozenset(d) != _FIELDS:
        return None, "record is not an event object with the expected fields"
    if (type(d["seq"]) is not int or type(d["ts_ns"]) is not int or type(d["kind"]) is not str
            or not all(d[f] is None or type(d[f]) is str for f in ("agent", "action_id", "proposal_id"))):
        return None, "record fields have the wrong types"
    if expected_seq is not None and d["seq"] != expected_seq:
        return None, f"sequence number {d['seq']} where {expected_seq} was expected"
    return d, None


cdef bint _valid_record_after(bytes data, Py_ssize_t start):
    """Whether any CRC-valid record starts after byte ``start`` (sequence not checked)."""
    for m in _CANDIDATE.finditer(data, start + 1):
        p = m.start()
        nl = data.find(b"\n", p)
        if nl < 0:
            return False
        d, _ = _check_line(data[p:nl], None)
        if d is not None:
            return True
    return False


cdef class EventLog:
    """Append-only event log; see the module docstring for the journal format.

    Args:
        path (str | os.PathLike | None): Journal file, or ``None`` for memory only.  The
            file is created (mode 0600) if missing; an existing empty file is reused.
        fsync (str): ``"always"``, ``"batch"`` or ``"never"``.
        batch_interval_s (float): ``"batch"``: sync when this many seconds passed since
            the last sync (checked at append).
        batch_records (int): ``"batch"``: sync after this many unsynced appends.

    Attributes:
        path (str | None): The journal file.
        fsync (str): The durability policy.
        closed (bool): Whether :meth:`close` was called.
        recovery (RecoveryReport | None): Set by :meth:`open`; ``None`` for a log created
            with the constructor.

    Raises:
        ValueError: unknown ``fsync`` policy, negative ``batch_interval_s`` or
            ``batch_records`` < 1.
        FileExistsError: ``path`` exists and is not empty (use :meth:`EventLog.open`).
        OSError: the journal cannot be created.
    """

    def __cinit__(self):
        self._fd = -1
        self._offs = NULL
        self._n = 0
        self._cap = 0
        self._buf = bytearray()
        self._closed = False
        self.recovery = None
        self._path = None
        self._waiters = []

    def __init__(self, path=None, *, fsync="batch", batch_interval_s=0.01, batch_records=1024):
        self._configure(fsync, batch_interval_s, batch_records)
        self._reserve(64)
        self._offs[0] = 0
        if path is None:
            return
        p = os.fspath(path)
        try:
            size = os.stat(p).st_size
        except FileNotFoundError:
            size = 0
        if size > 0:
            raise FileExistsError(
                f"event journal {p!r} already exists and is not empty ({size} bytes); use "
                f"EventLog.open({p!r}) to recover and continue it, or choose a new path"
            )
        self._open_fd(p, 0)

    def _configure(self, fsync, batch_interval_s, batch_records):
        if fsync not in _POLICIES:
            raise ValueError(
                f"fsync must be one of {', '.join(repr(p) for p in _POLICIES)}, got {fsync!r}"
            )
        if not (batch_interval_s >= 0):
            raise ValueError(f"batch_interval_s must be >= 0, got {batch_interval_s!r}")
        if batch_records < 1:
            raise ValueError(f"batch_records must be >= 1, got {batch_records!r}")
        self._fsync = fsync
        self._mode = _POLICIES.index(fsync)
        self._interval_ns = <int64_t>(batch_interval_s * 1e9)
        self._batch_records = batch_records

    def _open_fd(self, str p, int64_t size):
        existed = os.path.exists(p)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # One writer per journal: a second EventLog on the same file (in this or
            # another process) would interleave sequence numbers.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BlockingIOError(
                errno.EWOULDBLOCK,
                f"event journal {p!r} is already open for writing by another EventLog (in this or "
                "another process); a journal has exactly one writer: close the other log first",
            ) from None
        self._fd = fd
        self._path = p
        self._file_size = size
        self._unsynced = 0
        self._last_sync_ns = monotonic_ns()
        if not existed and self._mode != 2:
            # make the new directory entry durable too
            dfd = os.open(os.path.dirname(os.path.abspath(p)) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @classmethod
    def open(cls, path, *, fsync="batch", batch_interval_s=0.01, batch_records=1024):
        """Open (recovering) an existing journal and continue appending to it.

        Creates the file (mode 0600) if it does not exist.

        Args:
            path (str | os.PathLike): The journal file.
            fsync, batch_interval_s, batch_records: As for the constructor.

        Returns:
            EventLog: A log holding every recovered record; ``log.recovery`` is a
            :class:`RecoveryReport`.

        Raises:
            LogCorruptedError: a damaged record is followed by at least one valid record;
                ``offset`` is the first bad record's byte offset (the file is left as is).
            ValueError: bad ``fsync``/batch arguments.
            OSError: the file cannot be read, truncated or opened.
        """
        cdef EventLog log = cls.__new__(cls)
        log._configure(fsync, batch_interval_s, batch_records)
        log._reserve(64)
        log._offs[0] = 0
        p = os.fspath(path)
        log._open_fd(p, 0)  # take the writer lock before reading or repairing anything
        try:
            with open(p, "rb") as f:
                data = f.read()
        except BaseException:
            log.close()
            raise
        cdef Py_ssize_t n = len(data)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t nl
        cdef object bad = None
        cdef object reason = None
        cdef Py_ssize_t expected = 0
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                bad, reason = pos, "incomplete record (no terminating newline)"
                break
            d, reason = _check_line(data[pos:nl], expected)
            if d is None:
                bad = pos
                break
            log._push(data[pos + 9:nl])
            expected += 1
            pos = nl + 1
        truncated = 0
        if bad is not None:
            # A torn write damages only the final line. A complete, checksummed record
            # out of sequence, or damage with more lines after it, is corruption.
            last_nl = data.find(b"\n", bad)
            if (str(reason).startswith("sequence number") or (last_nl >= 0 and last_nl != n - 1)
                    or _valid_record_after(data, bad)):
                log.close()
                raise LogCorruptedError(p, bad, reason)
            truncated = n - bad
            try:
                os.ftruncate(log._fd, bad)
                os.fsync(log._fd)
            except BaseException:
                log.close()
                raise
            _logger.warning(
                "event journal %r had a torn tail: truncated %d byte(s) at offset %d (%s); "
                "%d record(s) recovered",
                p, truncated, bad, reason, log._n,
            )
        log._file_size = pos
        log.recovery = RecoveryReport(log._n, truncated, bad)
        return log

    def __dealloc__(self):
        if self._fd >= 0:
            system.close(self._fd)
            self._fd = -1
        if self._offs != NULL:
            free(self._offs)
            self._offs = NULL

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._n + extra + 1
        cdef Py_ssize_t cap
        cdef int64_t *p
        if need <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 64
        while cap < need:
            cap *= 2
        p = <int64_t *>realloc(self._offs, cap * sizeof(int64_t))
        if p == NULL:
            raise MemoryError("EventLog: cannot grow the offset array")
        self._offs = p
        self._cap = cap
        return 0

    cdef int _push(self, bytes j) except -1:
        self._reserve(1)
        self._buf += j
        self._n += 1
        self._offs[self._n] = len(self._buf)
        return 0

    cdef Event _event_at(self, Py_ssize_t i):
        cdef bytes raw = bytes(self._buf[self._offs[i]:self._offs[i + 1]])
        return _event_from_dict(_loads(raw), raw)

    cdef int _check_open(self) except -1:
        if self._closed:
            raise ValueError("EventLog is closed")
        return 0

    cdef int _wake(self) except -1:
        # Resolve the futures of the waiting subscriptions (each re-checks the log).
        # A future of another thread's loop is resolved through that loop.
        cdef list waiters = self._waiters
        self._waiters = []
        running = _running_loop()
        for fut in waiters:
            if fut.done():  # its subscriber was cancelled
                continue
            loop = fut.get_loop()
            if loop is running:
                fut.set_result(None)
            else:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # that loop is closed: nobody is waiting any more
                    pass
        return 0

    cdef int _write_all(self, bytes payload) except -1:
        cdef const char *p = PyBytes_AS_STRING(payload)
        cdef Py_ssize_t left = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t done = 0
        cdef system.ssize_t rc
        while done < left:
            rc = system.write(self._fd, p + done, left - done)
            if rc < 0:
                if system.errno == system.EINTR:
                    continue
                err = system.errno
                if done:
                    # never leave a partial record behind a later append
                    system.ftruncate(self._fd, self._file_size)
                raise OSError(err, f"write to event journal {self._path!r} failed: {os.strerror(err)}")
            done += rc
        self._file_size += left
        return 0

    cdef int _sync(self) except -1:
        cdef int rc
        cdef int fd = self._fd
        if fd < 0:
            return 0
        with nogil:
            rc = system.fdatasync(fd)
        if rc != 0:
            err = system.errno
            raise OSError(err, f"fdatasync of event journal {self._path!r} failed: {os.strerror(err)}")
        self._unsynced = 0
        self._last_sync_ns = monotonic_ns()
        return 0

    cdef int _after_write(self, Py_ssize_t count) except -1:
        self._unsynced += count
        if self._mode == 0:
            self._sync()
        elif self._mode == 1:
            if (self._unsynced >= self._batch_records
                    or monotonic_ns() - self._last_sync_ns >= self._interval_ns):
                self._sync()
        return 0

    def append(self, kind, data=None, *, agent=None, action_id=None, proposal_id=None):
        """Append one event.

        Args:
            kind (str): Event kind.
            data (Any): JSON-serializable payload (encoded at once; later mutation of the
                caller's object does not affect the log); see "Event data" in the module
                docstring for what is refused.
            agent, action_id, proposal_id (str | None): Optional identifiers.

        Returns:
            Event: The appended event (``seq`` = previous length, ``ts_ns`` = now).

        Raises:
            TypeError: ``data`` is not JSON-serializable, e.g. a NaN or infinite float
                (message names the kind), or a field has the wrong type; nothing is
                appended.
            ValueError: the log is closed.
            OSError: the journal write or sync failed; nothing is appended in memory.
        """
        self._check_open()
        cdef str k = _check_kind(kind)
        agent = _check_opt_str(agent, "agent")
        action_id = _check_opt_str(action_id, "action_id")
        proposal_id = _check_opt_str(proposal_id, "proposal_id")
        cdef int64_t seq = self._n
        cdef int64_t ts = realtime_ns()
        cdef bytes j = _encode_record(seq, ts, k, agent, action_id, proposal_id, data)
        if self._fd >= 0:
            self._write_all(_frame(j))
        self._push(j)
        if self._fd >= 0:
            self._after_write(1)
        if self._waiters:
            self._wake()
        return _make_event(seq, ts, k, agent, action_id, proposal_id, data, j)

    def append_batch(self, records):
        """Append many events at once (all or nothing), e.g. a batch from a worker.

        Args:
            records (list[dict]): Each dict has ``kind`` and optionally ``data``,
                ``agent``, ``action_id``, ``proposal_id`` and ``ts_ns`` (int; default now).
                Other keys are rejected.

        Returns:
            int: The ``seq`` of the first appended record (for an empty batch, the
            ``seq`` the next record will get).

        Raises:
            TypeError: a record is not a dict, a field has the wrong type, or data is not
                JSON-serializable (e.g. a NaN or infinite float; the message names the
                record's kind); nothing is appended.
            ValueError: a record lacks ``kind`` or has unknown keys, or the log is closed.
            OSError: the journal write or sync failed; nothing is appended in memory.
        """
        self._check_open()
        cdef int64_t first = self._n
        cdef int64_t seq = first
        cdef int64_t now = realtime_ns()
        cdef list encoded = []
        cdef list frames = []
        cdef bytes j
        for i, rec in enumerate(records):
            if type(rec) is not dict:
                raise TypeError(f"append_batch record {i} must be a dict, got {type(rec).__name__}")
            if "kind" not in rec:
                raise ValueError(f"append_batch record {i} has no 'kind'")
            unknown = set(rec) - _BATCH_KEYS
            if unknown:
                raise ValueError(
                    f"append_batch record {i} has unknown key(s) {sorted(map(str, unknown))}; "
                    f"allowed: {sorted(_BATCH_KEYS)}"
                )
            k = _check_kind(rec["kind"])
            ts = rec.get("ts_ns")
            if ts is None:
                ts = now
            elif type(ts) is not int:
                raise TypeError(f"append_batch record {i}: ts_ns must be int, got {type(ts).__name__}")
            j = _encode_record(
                seq, ts, k,
                _check_opt_str(rec.get("agent"), "agent"),
                _check_opt_str(rec.get("action_id"), "action_id"),
                _check_opt_str(rec.get("proposal_id"), "proposal_id"),
                rec.get("data"),
            )
            encoded.append(j)
            seq += 1
        if not encoded:
            return first
        if self._fd >= 0:
            self._write_all(b"".join([_frame(x) for x in encoded]))
        self._reserve(len(encoded))
        for j in encoded:
            self._push(j)
        if self._fd >= 0:
            self._after_write(len(encoded))
        if self._waiters:
            self._wake()
        return first

    def __len__(self):
        return self._n

    def __iter__(self):
        return iter(self.events())

    def events(self, since=0):
        """Return the events with ``seq >= since`` as new :class:`Event` objects.

        Raises:
            ValueError: ``since`` is negative.
        """
        _check_since(since)
        cdef Py_ssize_t i
        return [self._event_at(i) for i in range(since, self._n)]

    def filter(self, kind=None, agent=None):
        """Return the events matching ``kind`` and ``agent`` (``None`` = any), in order."""
        cdef list out = []
        cdef Py_ssize_t i
        cdef Event e
        for i in range(self._n):
            e = self._event_at(i)
            if (kind is None or e.kind == kind) and (agent is None or e.agent == agent):
                out.append(e)
        return out

    def flush(self):
        """Sync the journal now (``fsync`` policies ``"always"``/``"batch"``).

        Raises:
            ValueError: the log is closed.
            OSError: fdatasync failed.
        """
        self._check_open()
        if self._fd >= 0 and self._mode != 2 and self._unsynced:
            self._sync()

    def subscribe(self, after=None, maxsize=10_000):
        """Follow the log live: an async iterator of its events, from a cursor on.

        ``async for e in log.subscribe(): ...`` yields the events already in the log,
        in ``seq`` order, then each new one as it is appended (appends from another
        thread wake the subscriber through its event loop).

        Falling behind: when more than ``maxsize`` events lie between the subscription's
        cursor and the log's end at the moment it reads, it yields one event
        ``Event(seq=to, kind="gap", data={"from": from, "to": to})`` -- ``from`` and
        ``to`` are the first and last skipped ``seq`` (inclusive); ``ts_ns`` is when the
        gap was noticed -- and continues with event ``to + 1``, ``maxsize`` events
        before the end.  So a subscriber is never more than ``maxsize`` events behind
        once it reads, gets one gap per fall-behind, and ``e.seq`` of every item it
        receives (gap included) is a cursor to resume from with ``subscribe(after=e.seq)``.
        The appender never blocks and nothing is buffered per subscription: it is a
        cursor over the events the log keeps anyway (a subscription that is never read
        costs a few dozen bytes, however much is appended).

        End: once the log is closed, the subscription yields the events it has not seen
        (the gap rule still applies) and then stops (``StopAsyncIteration``); on a closed
        log it does so at once.  :meth:`Subscription.aclose` (or leaving an ``async
        with contextlib.aclosing(...)`` block) stops it early.  Cancelling a subscriber
        waiting for an event leaves nothing behind; no task is ever created.

        Args:
            after (int | None): Cursor: yield the events with ``seq > after``; ``None``
                (default) = from the first event (``seq`` 0).  A cursor at or beyond the
                end waits for events past it.
            maxsize (int): The most events the subscription may lag behind (>= 1).

        Returns:
            Subscription: An async iterator of :class:`Event`.

        Raises:
            TypeError: ``after`` is not an int or None, or ``maxsize`` not an int (a
                bool is neither).
            ValueError: ``after < 0`` or ``maxsize < 1``.
        """
        cdef int64_t start = 0
        if after is not None:
            if type(after) is bool or not isinstance(after, int):
                raise TypeError(f"after must be an int or None, got {type(after).__name__}: {after!r}")
            if after < 0:
                raise ValueError(f"after must be >= 0 (or None), got {after}")
            start = after + 1
        if type(maxsize) is bool or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}: {maxsize!r}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        cdef Subscription sub = Subscription.__new__(Subscription)
        sub._log = self
        sub._next = start
        sub._maxsize = maxsize
        return sub

    def close(self):
        """Sync (unless ``fsync="never"``) and close the journal.  Idempotent.

        Subscriptions yield what they have not seen yet and then stop
        (see :meth:`subscribe`).

        Raises:
            OSError: the final fdatasync failed (the file is closed anyway).
        """
        if self._closed:
            return
        self._closed = True
        if self._waiters:
            self._wake()
        cdef int fd = self._fd
        if fd < 0:
            return
        try:
            if self._mode != 2 and self._unsynced:
                self._sync()
        finally:
            self._fd = -1
            os.close(fd)

    @property
    def closed(self):
        return self._closed

    @property
    def path(self):
        return self._path

    @property
    def fsync(self):
        return self._fsync

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return (
            f"<EventLog path={self._path!r} events={self._n} fsync={self._fsync!r}"
            f"{' closed' if self._closed else ''}>"
        )


def _resolve(fut):
    if not fut.done():
        fut.set_result(None)


cdef Event _gap_event(int64_t first, int64_t last):
    cdef dict data = {"from": first, "to": last}
    cdef int64_t ts = realtime_ns()
    cdef bytes j = _encode_record(last, ts, "gap", None, None, None, data)
    return _make_event(last, ts, "gap", None, None, None, data, j)


@cython.auto_pickle(False)
cdef class Subscription:
    """A live cursor over an :class:`EventLog`: an async iterator of its events.

    Made by :meth:`EventLog.subscribe` (which describes cursors, gaps and the end);
    one task reads it at a time.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Subscription cannot be created directly; use EventLog.subscribe()")

    def __aiter__(self):
        return self

    async def __anext__(self):
        """The next event (or ``gap`` marker); waits for an append when there is none.

        Raises:
            StopAsyncIteration: the subscription ended (log closed and read to its end,
                or :meth:`aclose`).
            RuntimeError: another task is already waiting on this subscription.
        """
        cdef EventLog log = self._log
        cdef int64_t n, first
        while True:
            if self._done:
                raise StopAsyncIteration
            n = log._n
            if n - self._next > self._maxsize:
                first = self._next
                self._next = n - self._maxsize
                return _gap_event(first, self._next - 1)
            if self._next < n:
                self._next += 1
                return log._event_at(self._next - 1)
            if log._closed:
                self._done = True
                raise StopAsyncIteration
            if self._fut is not None:
                raise RuntimeError("this subscription is already being read by another task")
            fut = asyncio.get_running_loop().create_future()
            log._waiters.append(fut)
            self._fut = fut
            try:
                await fut
            except BaseException:  # cancelled: leave nothing behind in the log
                try:
                    log._waiters.remove(fut)
                except ValueError:
                    pass
                raise
            finally:
                self._fut = None

    async def aclose(self):
        """Stop the subscription: a read waiting for an event (and every later one) ends.

        Idempotent.
        """
        self._done = True
        fut = self._fut
        if fut is not None:
            loop = fut.get_loop()
            if loop is _running_loop():
                _resolve(fut)
            else:
                loop.call_soon_threadsafe(_resolve, fut)

    def __repr__(self):
        state = "done" if self._done else f"next_seq={self._next} maxsize={self._maxsize}"
        return f"<Subscription {state} of {self._log!r}>"
