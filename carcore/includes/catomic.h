/* carcore/includes/catomic.h -- seq_cst int64 atomics and helpers.
 *
 * Thin static inline wrappers over the GCC/Clang __atomic_* builtins so the
 * Cython code never spells a builtin directly.  All operations are
 * sequentially consistent and lock-free for naturally aligned int64 on every
 * platform carcore supports (x86-64, aarch64); they are therefore safe on
 * memory shared between processes through mmap(MAP_SHARED).
 */
#ifndef CARCORE_CATOMIC_H
#define CARCORE_CATOMIC_H

#include <stdint.h>
#include <string.h>

static inline int64_t car_atomic_load(int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static inline void car_atomic_store(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

static inline int64_t car_atomic_fetch_add(int64_t *p, int64_t d) {
    return __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST);
}

/* On failure *expected is updated with the current value; returns 1 on success. */
static inline int car_atomic_cas(int64_t *p, int64_t *expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* Returns 1 if a + b overflows int64 (and *out is then unspecified). */
static inline int car_add_overflow(int64_t a, int64_t b, int64_t *out) {
    return __builtin_add_overflow(a, b, out);
}

/* Atomically add d to *p unless the sum overflows int64 or exceeds cap; with
 * saturate (for d >= 0), an overflowing sum is clamped to INT64_MAX instead.  A CAS
 * loop: the check and the store are one atomic step.  Returns 1 and sets *out to the
 * new value when applied; returns 0, leaving *p unchanged, and sets *out to the value
 * that was seen, otherwise. */
static inline int car_atomic_add_bounded(int64_t *p, int64_t d, int64_t cap, int saturate,
                                         int64_t *out) {
    int64_t cur = car_atomic_load(p);
    int64_t next;
    for (;;) {
        if (car_add_overflow(cur, d, &next)) {
            if (!saturate) {
                *out = cur;
                return 0;
            }
            next = INT64_MAX;
        }
        if (next > cap) {
            *out = cur;
            return 0;
        }
        if (car_atomic_cas(p, &cur, next)) {
            *out = next;
            return 1;
        }
    }
}

static inline double car_bits_to_f64(int64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline int64_t car_f64_to_bits(double d) {
    int64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

static inline int car_is_lock_free_int64(void) {
    return __atomic_always_lock_free(sizeof(int64_t), 0);
}

#endif /* CARCORE_CATOMIC_H */
