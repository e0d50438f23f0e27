# cython: language_level=3
"""Layout of the compiled event-log classes (see eventlog.pyx)."""

from libc.stdint cimport int64_t


cdef class Event:
    cdef readonly int64_t seq
    cdef readonly int64_t ts_ns
    cdef readonly str kind
    cdef readonly object agent
    cdef readonly object action_id
    cdef readonly object proposal_id
    cdef object _data         # cached immutable scalar, or _LAZY
    cdef bytes _raw           # the record's JSON object (orjson bytes)


cdef class RecoveryReport:
    cdef readonly Py_ssize_t records
    cdef readonly int64_t truncated_bytes
    cdef readonly object torn_offset


cdef class EventLog:
    cdef object _path                 # str | None
    cdef int _fd                      # journal fd, -1 when in memory or closed
    cdef str _fsync
    cdef int _mode                    # 0 always, 1 batch, 2 never
    cdef int64_t _interval_ns
    cdef int64_t _batch_records
    cdef bytearray _buf               # concatenated record JSON objects
    cdef int64_t *_offs               # _offs[i] = start of record i in _buf; _offs[n] = end
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    cdef int64_t _unsynced
    cdef int64_t _last_sync_ns
    cdef int64_t _file_size
    cdef bint _closed
    cdef readonly object recovery
    cdef list _waiters                # futures of subscriptions waiting for an append (subscribe)

    cdef int _reserve(self, Py_ssize_t extra) except -1
    cdef int _push(self, bytes j) except -1
    cdef Event _event_at(self, Py_ssize_t i)
    cdef int _write_all(self, bytes payload) except -1
    cdef int _sync(self) except -1
    cdef int _after_write(self, Py_ssize_t count) except -1
    cdef int _check_open(self) except -1
    cdef int _wake(self) except -1


cdef class Subscription:
    cdef EventLog _log
    cdef int64_t _next                # seq of the next event to yield (the cursor)
    cdef int64_t _maxsize             # most events it may lag behind the log's end
    cdef bint _done
    cdef object _fut                  # the future it waits on, or None
