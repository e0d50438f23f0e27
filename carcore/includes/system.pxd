# cython: language_level=3
"""POSIX and compiler-builtin declarations used by carcore (declarations only)."""

from libc.stdint cimport int64_t


cdef extern from "<sys/types.h>" nogil:
    ctypedef long off_t
    ctypedef unsigned int mode_t
    ctypedef long ssize_t


cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR
    int ENOENT
    int EEXIST


cdef extern from "<fcntl.h>" nogil:
    int O_RDONLY
    int O_RDWR
    int O_WRONLY
    int O_CREAT
    int O_EXCL
    int O_APPEND
    int O_CLOEXEC


cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t count)
    int fsync(int fd)
    int fdatasync(int fd)
    int ftruncate(int fd, off_t length)
    int close(int fd)
    int getpid()


cdef extern from "<sys/mman.h>" nogil:
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    void *MAP_FAILED
    int shm_open(const char *name, int oflag, mode_t mode)
    int shm_unlink(const char *name)
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)


cdef extern from "<sys/stat.h>" nogil:
    struct stat:
        off_t st_size
    int fstat(int fd, stat *buf)


cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec *tp)
    clockid_t CLOCK_REALTIME
    clockid_t CLOCK_MONOTONIC


cdef extern from "catomic.h" nogil:
    int64_t car_atomic_load(int64_t *p)
    void car_atomic_store(int64_t *p, int64_t v)
    int64_t car_atomic_fetch_add(int64_t *p, int64_t d)
    bint car_atomic_cas(int64_t *p, int64_t *expected, int64_t desired)
    bint car_add_overflow(int64_t a, int64_t b, int64_t *out)
    bint car_atomic_add_bounded(int64_t *p, int64_t d, int64_t cap, bint saturate, int64_t *out)
    double car_bits_to_f64(int64_t bits)
    int64_t car_f64_to_bits(double d)
    bint car_is_lock_free_int64()


cdef inline int64_t realtime_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
