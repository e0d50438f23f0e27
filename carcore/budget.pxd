# cython: language_level=3
"""Layout of the compiled shared-memory counters (see budget.pyx)."""

from libc.stdint cimport int64_t


cdef class BudgetCounters:
    cdef readonly str name
    cdef readonly Py_ssize_t slots
    cdef readonly bint owner
    cdef bytes _cname
    cdef char *_base
    cdef size_t _size
    cdef int _owner_pid
    cdef bint _unlinked

    cdef int64_t *_slot(self, object i) except NULL
    cdef int _map(self, int fd, size_t size, str name) except -1
    cdef void _release(self) noexcept
