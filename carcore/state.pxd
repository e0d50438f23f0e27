# cython: language_level=3
"""Layout of the compiled state classes (see state.pyx)."""

cimport cython
from libc.stdint cimport int64_t


cdef class StateTransition:
    cdef readonly str key
    cdef object _old          # stored form, or _MISSING when the key was absent
    cdef object _new          # stored form, or _MISSING when the key was deleted
    cdef readonly str writer
    cdef readonly int64_t ts_ns


cdef class _StateView:
    cdef list _log            # list[StateTransition] (an overlay's are its local changes)
    cdef object _raw(self, str key, bint track)
    cdef int64_t _view_version(self, str key)
    cdef list _key_list(self)
    cdef StateTransition _set_stored(self, str key, object stored, str writer, int64_t ts)
    cdef StateTransition _delete_stored(self, str key, str writer, int64_t ts, bint merging)
    cdef void _adopt_bases(self, dict bases)
    @cython.final
    cdef list _apply_stored(self, dict sets, list deletes, str writer)
    @cython.final
    cdef StateTransition _set(self, object key, object value, object writer)
    @cython.final
    cdef StateTransition _delete(self, object key, object writer)


cdef class StateStore(_StateView):
    cdef dict _data           # key -> stored value (scalar as-is, container as JSON bytes)
    cdef dict _versions       # key -> version (process-global counter)
    cdef void _replace(self, dict enc)


cdef class Overlay(_StateView):
    cdef readonly str name
    cdef readonly _StateView parent
    cdef dict _local          # key -> stored value written locally
    cdef dict _tombs          # key -> None (ordered set of local deletes)
    cdef dict _base           # key -> parent's view version at first touch
    cdef dict _lversions      # key -> version of the local write/delete (or pinned after merge)
    cdef void _touch(self, str key)
    cdef object _visible(self, str key)
