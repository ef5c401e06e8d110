/*
 * override.c: the exported symbols, and nothing else.  Each is a forward:
 * the fast-path test that keeps programs without regions at the cost of one
 * compare (malloc/free below the threshold: one compare and the real call),
 * then the hl_* function that holds the logic, inside HL_SLOW.
 *
 * HL_SLOW is the one discipline of every slow path: cancellation disabled
 * (the library's open/read/write/pthread_join are cancellation points the
 * program never asked for; a thread cancelled inside malloc would leak what
 * it was mapping), errno saved and given back, so only a failure the call
 * reports changes it.  msync, the one interposed call that is a cancellation
 * point in glibc, acts on a pending cancellation before its slow path.
 *
 * Interposed when preloaded: mmap mmap64 munmap mremap mprotect msync madvise
 *   posix_madvise mlock munlock malloc free calloc realloc reallocarray
 *   posix_memalign aligned_alloc memalign valloc pvalloc malloc_usable_size.
 */
#include "hl.h"

#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

typedef struct {
    int err, cancel;
} hl_slow;

static inline void slow_enter(hl_slow *s)
{
    s->err = errno;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &s->cancel);
}

/* Leaves the slow path: errno as it was, or `fail` (non-zero) for a failed call. */
static inline void slow_leave(hl_slow *s, int fail)
{
    int ignored;
    pthread_setcancelstate(s->cancel, &ignored);
    errno = fail ? fail : s->err;
}

#define HL_SLOW(type, expr, failed)                                                                                   \
    ({                                                                                                                \
        hl_slow s_;                                                                                                   \
        slow_enter(&s_);                                                                                              \
        type v_ = (expr);                                                                                             \
        slow_leave(&s_, (failed) ? errno : 0);                                                                        \
        v_;                                                                                                           \
    })

/* For the hl_* that return an errno value (0: done). */
#define HL_SLOW_ERR(expr)                                                                                             \
    ({                                                                                                                \
        hl_slow s_;                                                                                                   \
        slow_enter(&s_);                                                                                              \
        int e_ = (expr);                                                                                              \
        slow_leave(&s_, 0);                                                                                           \
        e_;                                                                                                           \
    })

static inline int errno_result(int e)
{
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

HL_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
        if (likely(!hl_maybe_managed((uintptr_t)addr, len)))
            return r_mmap(addr, len, prot, flags, fd, off);
        return HL_SLOW(void *, hl_mmap_fixed_slow(addr, len, prot, flags, fd, off), v_ == MAP_FAILED);
    }
    if (likely(!hl_active || fd < 0 || (flags & MAP_ANONYMOUS)))
        return r_mmap(addr, len, prot, flags, fd, off);
    return HL_SLOW(void *, hl_mmap_file(addr, len, prot, flags, fd, off), v_ == MAP_FAILED);
}

HL_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

HL_EXPORT int munmap(void *addr, size_t len)
{
    if (likely(atomic_load_explicit(&hl_nreg, memory_order_relaxed) == 0))
        return r_munmap(addr, len);
    return HL_SLOW(int, hl_munmap_slow(addr, len), v_ != 0);
}

HL_EXPORT void *mremap(void *old, size_t oldlen, size_t newlen, int flags, ...)
{
    void *to = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        to = va_arg(ap, void *);
        va_end(ap);
    }
    if (likely(!hl_maybe_managed((uintptr_t)old, oldlen ? oldlen : 1) &&
               !((flags & MREMAP_FIXED) && hl_maybe_managed((uintptr_t)to, newlen))))
        return r_mremap(old, oldlen, newlen, flags, to);
    return HL_SLOW(void *, hl_mremap_slow(old, oldlen, newlen, flags, to), v_ == MAP_FAILED);
}

HL_EXPORT int mprotect(void *addr, size_t len, int prot)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_mprotect(addr, len, prot);
    return errno_result(HL_SLOW_ERR(hl_range_op_slow(addr, len, OP_MPROTECT, prot)));
}

HL_EXPORT int msync(void *addr, size_t len, int flags)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_msync(addr, len, flags);
    pthread_testcancel(); /* msync is a cancellation point: a pending cancellation acts first, as in glibc */
    return errno_result(HL_SLOW_ERR(hl_range_op_slow(addr, len, OP_MSYNC, flags)));
}

HL_EXPORT int madvise(void *addr, size_t len, int adv)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_madvise(addr, len, adv);
    return errno_result(HL_SLOW_ERR(hl_range_op_slow(addr, len, OP_MADVISE, adv)));
}

HL_EXPORT int posix_madvise(void *addr, size_t len, int adv)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_posix_madvise(addr, len, adv);
    return HL_SLOW_ERR(hl_range_op_slow(addr, len, OP_PMADVISE, adv));
}

HL_EXPORT int mlock(const void *addr, size_t len)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_mlock(addr, len);
    return errno_result(HL_SLOW_ERR(hl_range_op_slow((void *)addr, len, OP_MLOCK, 0)));
}

HL_EXPORT int munlock(const void *addr, size_t len)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_munlock(addr, len);
    return errno_result(HL_SLOW_ERR(hl_range_op_slow((void *)addr, len, OP_MUNLOCK, 0)));
}

/* The slow paths of the allocation calls live out of line: the fast path (one compare, then a
 * tail call of the real function) stays free of the frame the slow one needs. */
#define SLOW_FN __attribute__((noinline, cold))

/* A large allocation, or NULL (errno untouched) to let the real allocator answer. */
static SLOW_FN void *huge(size_t n, size_t align, const char *what)
{
    return HL_SLOW(void *, hl_huge_alloc(n, align, what), 0);
}

static SLOW_FN int huge_free(void *p) { return HL_SLOW(int, hl_huge_free(p), 0); }

static SLOW_FN size_t huge_capacity(void *p) { return HL_SLOW(size_t, hl_huge_capacity(p, 1), 0); }

HL_EXPORT void *malloc(size_t n)
{
    if (unlikely(n >= hl_alloc_thresh)) {
        void *p = huge(n, 0, "malloc");
        if (p)
            return p;
    }
    return r_malloc(n);
}

static SLOW_FN void free_slow(void *p)
{
    if (!p || (may_be_huge_alloc(p) && huge_free(p)) || in_arena(p))
        return;
    r_free(p);
}

HL_EXPORT void free(void *p)
{
    if (unlikely(may_be_huge_alloc(p) || in_arena(p))) {
        free_slow(p);
        return;
    }
    r_free(p);
}

HL_EXPORT void *calloc(size_t n, size_t m)
{
    size_t t;
    if (unlikely(!__builtin_mul_overflow(n, m, &t) && t >= hl_alloc_thresh)) {
        void *p = huge(t, 0, "calloc"); /* fresh anonymous pages are zero */
        if (p)
            return p;
    }
    return r_calloc(n, m);
}

HL_EXPORT void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (unlikely(in_arena(p))) {
        if (n == 0)
            return NULL; /* frees p (the bootstrap arena is never reused), as glibc's realloc(p, 0) */
        void *q = malloc(n);
        if (q)
            memcpy(q, p, min_sz(n, arena_size_of(p)));
        return q;
    }
    return HL_SLOW(void *, hl_realloc(p, n), v_ == NULL && n != 0);
}

HL_EXPORT void *reallocarray(void *p, size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, t);
}

HL_EXPORT int posix_memalign(void **pp, size_t align, size_t n)
{
    if (unlikely(n >= hl_alloc_thresh) && pow2(align) && align % sizeof(void *) == 0) {
        void *p = huge(n, align, "posix_memalign");
        if (p) {
            *pp = p;
            return 0;
        }
    }
    return r_posix_memalign(pp, align, n);
}

HL_EXPORT void *aligned_alloc(size_t align, size_t n)
{
    if (unlikely(n >= hl_alloc_thresh) && pow2(align)) {
        void *p = huge(n, align, "aligned_alloc");
        if (p)
            return p;
    }
    return r_aligned_alloc(align, n);
}

static void *memalign_as(size_t align, size_t n, const char *what)
{
    if (unlikely(n >= hl_alloc_thresh) && pow2(align)) {
        void *p = huge(n, align, what);
        if (p)
            return p;
    }
    return r_memalign(align, n);
}

HL_EXPORT void *memalign(size_t align, size_t n) { return memalign_as(align, n, "memalign"); }

HL_EXPORT void *valloc(size_t n) { return memalign_as(KB4, n, "valloc"); }

HL_EXPORT void *pvalloc(size_t n)
{
    if (n > SIZE_MAX - KB4) {
        errno = ENOMEM;
        return NULL;
    }
    return memalign_as(KB4, n ? round_up(n, KB4) : KB4, "pvalloc");
}

HL_EXPORT size_t malloc_usable_size(void *p)
{
    if (!p)
        return 0;
    if (unlikely(in_arena(p)))
        return arena_size_of(p);
    size_t cap = 0;
    if (unlikely(may_be_huge_alloc(p)) && atomic_load_explicit(&hl_nalloc, memory_order_relaxed))
        cap = huge_capacity(p);
    return cap ? cap : r_usable(p);
}
