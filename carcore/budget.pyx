# cython: language_level=3, embedsignature=True
"""Lock-free int64 counters in POSIX shared memory, shared between processes.

A :class:`BudgetCounters` owns (or attaches to) a segment created with shm_open(3) and
mapped with mmap(2) (``multiprocessing.shared_memory`` is deliberately not used: its
resource tracker unlinks segments from attaching processes).  Every operation is a
sequentially consistent GCC ``__atomic_*`` builtin (see ``includes/catomic.h``), so
counters are safe to update concurrently from any number of processes and threads.

Segment layout (little-endian host order, int64 words)::

    offset 0    magic   0x3152435245524143 ("CAR" "ERC" "1")
    offset 8    slots   number of counters
    offset 16   pid     creator's process id
    offset 64   slot 0, slot 1, ...   each slot on its own 64-byte cache line

Segment names are ``/{prefix}-{pid}-{16 hex digits}``; :meth:`BudgetCounters.sweep_stale`
removes segments whose creator process is gone.  The owner unlinks the segment on
:meth:`BudgetCounters.close` (or when garbage-collected), but only in the process that
created it (a forked child never unlinks its parent's segment).
"""

from libc.stdint cimport int64_t, INT64_MIN, INT64_MAX
from libc.math cimport isfinite

from carcore.includes cimport system

import os
import re

cdef int64_t _MAGIC = 0x3152435245524143
cdef Py_ssize_t _HEADER = 64
cdef Py_ssize_t _STRIDE = 64
cdef Py_ssize_t _MAX_SLOTS = 1 << 20
cdef int64_t _I64_MIN = INT64_MIN
cdef int64_t _I64_MAX = INT64_MAX

if not system.car_is_lock_free_int64():  # pragma: no cover - every supported platform
    raise ImportError("carcore.budget needs lock-free 64-bit atomics on this platform")


def _attach(name):
    """Unpickle helper: attach to ``name`` as a non-owner."""
    return BudgetCounters.attach(name)


cdef int64_t _as_i64(object v, str argname) except? -1:
    if type(v) is bool or not isinstance(v, int):
        if isinstance(v, float) and v != v:
            raise TypeError(f"{argname} must be an int, got NaN")
        raise TypeError(f"{argname} must be an int, got {type(v).__name__}: {v!r}")
    if not (_I64_MIN <= v <= _I64_MAX):
        raise OverflowError(f"{argname}={v} does not fit in a signed 64-bit counter")
    return <int64_t>v


cdef double _as_f64(object v, str argname) except? -1.0:
    if type(v) is bool or not isinstance(v, (int, float)):
        raise TypeError(f"{argname} must be a float, got {type(v).__name__}: {v!r}")
    cdef double d
    try:
        d = float(v)
    except OverflowError:
        raise OverflowError(f"{argname}={v} is too large for a float") from None
    if not isfinite(d):
        raise ValueError(f"{argname} must be finite, got {v!r}")
    return d


cdef class BudgetCounters:
    """Fixed number of atomic int64 counters ("slots") in a shared-memory segment.

    Args:
        slots (int): Number of counters (1 .. 2**20); all start at 0.
        prefix (str): Segment name prefix: the segment is ``/{prefix}-{pid}-{hex}``.

    Attributes:
        name (str): The segment name (with the leading ``/``); pass it to :meth:`attach`.
        slots (int): Number of counters.
        owner (bool): True for the creating instance (it unlinks on close).
        closed (bool): Whether :meth:`close` was called.

    Each slot holds an int64; the ``*_f64`` methods reinterpret the same 64 bits as an
    IEEE-754 double, so use a given slot either as int or as float, not both.

    Raises:
        ValueError: ``slots`` out of range or ``prefix`` contains ``/`` or is empty.
        OSError: the segment cannot be created or mapped.

    Pickling attaches by name: the unpickled copy (e.g. in a worker process) is a
    non-owner.
    """

    def __cinit__(self):
        self._base = NULL
        self._size = 0
        self._unlinked = True
        self.owner = False

    def __init__(self, slots=8, *, prefix="carmulti"):
        if type(slots) is bool or not isinstance(slots, int) or not (1 <= slots <= _MAX_SLOTS):
            raise ValueError(f"slots must be an int between 1 and {_MAX_SLOTS}, got {slots!r}")
        if not isinstance(prefix, str) or not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty str without '/', got {prefix!r}")
        cdef int fd = -1
        cdef size_t size = _HEADER + slots * _STRIDE
        cdef bytes cname
        for _ in range(16):
            name = f"/{prefix}-{os.getpid()}-{os.urandom(8).hex()}"
            cname = name.encode()
            fd = system.shm_open(cname, system.O_RDWR | system.O_CREAT | system.O_EXCL, 0o600)
            if fd >= 0:
                break
            if system.errno != system.EEXIST:
                err = system.errno
                raise OSError(err, f"shm_open({name!r}) failed: {os.strerror(err)}")
        else:  # pragma: no cover
            raise OSError(f"could not create a unique shared-memory segment for prefix {prefix!r}")
        try:
            if system.ftruncate(fd, size) != 0:
                err = system.errno
                raise OSError(err, f"ftruncate of shared-memory segment {name!r} failed: {os.strerror(err)}")
            self._map(fd, size, name)
        except BaseException:
            system.shm_unlink(cname)
            raise
        finally:
            system.close(fd)
        self.name = name
        self._cname = cname
        self.slots = slots
        self.owner = True
        self._owner_pid = system.getpid()
        self._unlinked = False
        cdef int64_t *hdr = <int64_t *>self._base
        system.car_atomic_store(&hdr[1], slots)
        system.car_atomic_store(&hdr[2], self._owner_pid)
        system.car_atomic_store(&hdr[0], _MAGIC)

    cdef int _map(self, int fd, size_t size, str name) except -1:
        cdef void *p = system.mmap(NULL, size, system.PROT_READ | system.PROT_WRITE,
                                   system.MAP_SHARED, fd, 0)
        if p == system.MAP_FAILED:
            err = system.errno
            raise OSError(err, f"mmap of shared-memory segment {name!r} failed: {os.strerror(err)}")
        self._base = <char *>p
        self._size = size
        return 0

    @classmethod
    def attach(cls, name):
        """Attach to an existing segment by name (as a non-owner).

        Args:
            name (str): The segment name, with or without the leading ``/``.

        Returns:
            BudgetCounters: A non-owner view of the same counters.

        Raises:
            FileNotFoundError: no segment with that name exists (it was never created,
                or its owner closed it).
            ValueError: the segment is not a BudgetCounters segment.
            OSError: the segment cannot be opened or mapped.
        """
        if not isinstance(name, str) or not name.strip("/"):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if not name.startswith("/"):
            name = "/" + name
        cdef bytes cname = name.encode()
        cdef int fd = system.shm_open(cname, system.O_RDWR, 0)
        if fd < 0:
            err = system.errno
            if err == system.ENOENT:
                raise FileNotFoundError(
                    err,
                    f"no BudgetCounters shared-memory segment named {name!r} (the owner may have "
                    f"closed it already, or it was never created)",
                )
            raise OSError(err, f"shm_open({name!r}) failed: {os.strerror(err)}")
        cdef BudgetCounters self = cls.__new__(cls)
        cdef system.stat st
        cdef int64_t *hdr
        try:
            if system.fstat(fd, &st) != 0:
                err = system.errno
                raise OSError(err, f"fstat of {name!r} failed: {os.strerror(err)}")
            if st.st_size < _HEADER + _STRIDE:
                raise ValueError(f"shared-memory segment {name!r} is not a BudgetCounters segment (too small)")
            self._map(fd, <size_t>st.st_size, name)
        finally:
            system.close(fd)
        hdr = <int64_t *>self._base
        slots = system.car_atomic_load(&hdr[1])
        if (system.car_atomic_load(&hdr[0]) != _MAGIC or slots < 1
                or _HEADER + slots * _STRIDE > <Py_ssize_t>self._size):
            system.munmap(self._base, self._size)
            self._base = NULL
            raise ValueError(f"shared-memory segment {name!r} is not a BudgetCounters segment (bad header)")
        self.name = name
        self._cname = cname
        self.slots = slots
        self.owner = False
        self._unlinked = True
        self._owner_pid = -1
        return self

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        # close() and deallocation: unmap; the owner, in its creating process, unlinks
        if self._base != NULL:
            system.munmap(self._base, self._size)
            self._base = NULL
        if self.owner and not self._unlinked and self._owner_pid == system.getpid():
            system.shm_unlink(self._cname)
            self._unlinked = True

    cdef int64_t *_slot(self, object i) except NULL:
        if self._base == NULL:
            raise ValueError(f"BudgetCounters {self.name!r} is closed")
        if type(i) is bool or not isinstance(i, int):
            raise TypeError(f"slot index must be an int, got {type(i).__name__}: {i!r}")
        if not (0 <= i < self.slots):
            raise IndexError(f"slot index {i} out of range: this BudgetCounters has {self.slots} slots (0..{self.slots - 1})")
        return <int64_t *>(self._base + _HEADER + (<Py_ssize_t>i) * _STRIDE)

    def load(self, i):
        """Return the int value of slot ``i``.

        Raises:
            IndexError: ``i`` is out of range.  TypeError: ``i`` is not an int.
            ValueError: closed.
        """
        return system.car_atomic_load(self._slot(i))

    def store(self, i, value):
        """Set slot ``i`` to ``value``.

        Raises:
            TypeError: ``value`` is not an int.  OverflowError: it does not fit in int64.
            IndexError / ValueError: as :meth:`load`.
        """
        cdef int64_t *p = self._slot(i)
        system.car_atomic_store(p, _as_i64(value, "value"))

    def add(self, i, delta):
        """Atomically add ``delta`` to slot ``i`` and return the new value.

        Raises:
            OverflowError: ``delta`` does not fit in int64, or the result would overflow
                (the counter is unchanged).
            TypeError: ``delta`` is not an int.  IndexError / ValueError: as :meth:`load`.
        """
        cdef int64_t *p = self._slot(i)
        cdef int64_t d = _as_i64(delta, "delta")
        cdef int64_t v
        if not system.car_atomic_add_bounded(p, d, INT64_MAX, False, &v):
            raise OverflowError(
                f"adding delta={delta} to slot {i} (value {v}) would overflow int64; "
                f"the counter is unchanged"
            )
        return v

    def add_saturating(self, i, delta):
        """Atomically add ``delta`` (>= 0) to slot ``i``, stopping at the int64 maximum; return the new value.

        For totals that must never raise: a budget's spend counters saturate
        (a total of 2**63 - 1 tokens crosses every limit) instead of overflowing.

        Raises:
            ValueError: ``delta`` is negative.
            OverflowError: ``delta`` does not fit in int64.
            TypeError: ``delta`` is not an int.  IndexError / ValueError: as :meth:`load`.
        """
        cdef int64_t *p = self._slot(i)
        cdef int64_t d = _as_i64(delta, "delta")
        if d < 0:
            raise ValueError(f"add_saturating takes a delta >= 0, got {delta}")
        cdef int64_t v
        system.car_atomic_add_bounded(p, d, INT64_MAX, True, &v)
        return v

    def reserve(self, i, amount, cap):
        """Atomically add ``amount`` to slot ``i`` iff the result stays ``<= cap``.

        A CAS loop: under any concurrency the slot never exceeds ``cap`` because of a
        reservation.

        Args:
            i (int): Slot index.
            amount (int): Amount to reserve, ``>= 0``.
            cap (int): Upper bound for the slot's value.

        Returns:
            bool: True if reserved (the slot grew by ``amount``), False if it would have
            exceeded ``cap`` (the slot is unchanged).

        Raises:
            ValueError: ``amount`` is negative.  TypeError: ``amount``/``cap`` not int.
            OverflowError: ``amount``/``cap`` do not fit in int64.
            IndexError / ValueError: as :meth:`load`.
        """
        cdef int64_t *p = self._slot(i)
        cdef int64_t a = _as_i64(amount, "amount")
        cdef int64_t c = _as_i64(cap, "cap")
        if a < 0:
            raise ValueError(f"amount must be >= 0, got {amount}")
        cdef int64_t v
        return system.car_atomic_add_bounded(p, a, c, False, &v)

    def load_f64(self, i):
        """Return slot ``i`` interpreted as a float."""
        return system.car_bits_to_f64(system.car_atomic_load(self._slot(i)))

    def store_f64(self, i, value):
        """Set slot ``i`` to the float ``value``.

        Raises:
            TypeError: ``value`` is not a real number.  ValueError: it is NaN/infinite.
        """
        cdef int64_t *p = self._slot(i)
        system.car_atomic_store(p, system.car_f64_to_bits(_as_f64(value, "value")))

    def add_f64(self, i, delta):
        """Atomically add the float ``delta`` to slot ``i``; return the new float value.

        Raises:
            TypeError: ``delta`` is not a real number.  ValueError: it is NaN/infinite,
                or the result would be infinite (the counter is unchanged).
        """
        cdef int64_t *p = self._slot(i)
        cdef double d = _as_f64(delta, "delta")
        cdef int64_t cur = system.car_atomic_load(p)
        cdef double newf
        while True:
            newf = system.car_bits_to_f64(cur) + d
            if not isfinite(newf):
                raise ValueError(f"adding delta={delta!r} to slot {i} would not give a finite float")
            if system.car_atomic_cas(p, &cur, system.car_f64_to_bits(newf)):
                return newf

    def close(self):
        """Unmap the segment; the owner (in its creating process) also unlinks it.

        Idempotent.  Other processes that attached keep their mappings until they close.
        """
        self._release()

    def unlink(self):
        """Remove the segment's name now (mappings stay valid until closed).

        Idempotent; a missing name is ignored.
        """
        if self._cname is not None:
            system.shm_unlink(self._cname)
        self._unlinked = True

    @property
    def closed(self):
        return self._base == NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __reduce__(self):
        if self._base == NULL:
            raise ValueError(f"BudgetCounters {self.name!r} is closed; cannot pickle it")
        return (_attach, (self.name,))

    def __repr__(self):
        state = "closed" if self._base == NULL else ("owner" if self.owner else "attached")
        return f"<BudgetCounters {self.name!r} slots={self.slots} {state}>"

    @staticmethod
    def sweep_stale(prefix="carmulti"):
        """Unlink ``/dev/shm/{prefix}-{pid}-*`` segments whose creator pid is gone.

        A pid that is alive (possibly reused by an unrelated process) keeps its segments.

        Args:
            prefix (str): The prefix the segments were created with.

        Returns:
            list[str]: The removed segment names (with the leading ``/``).
        """
        pat = re.compile(re.escape(prefix) + r"-(\d+)-[0-9a-f]+")
        try:
            entries = os.listdir("/dev/shm")
        except FileNotFoundError:  # pragma: no cover - non-Linux
            return []
        removed = []
        me = os.getpid()
        for entry in sorted(entries):
            m = pat.fullmatch(entry)
            if m is None:
                continue
            pid = int(m.group(1))
            if pid == me:
                continue
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            except OverflowError:
                pass
            if system.shm_unlink(("/" + entry).encode()) == 0:
                removed.append("/" + entry)
        return removed
