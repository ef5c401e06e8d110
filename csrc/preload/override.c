/*
 * override.c: the exported symbols, and nothing else.  Each is a forward:
 * the fast-path test that keeps programs without regions at the cost of one
 * compare (malloc/free below the threshold: one compare and the real call),
 * then the hl_* function that holds the logic.
 *
 * Interposed when preloaded: mmap mmap64 munmap madvise posix_madvise mlock
 *   munlock malloc free calloc realloc reallocarray posix_memalign
 *   aligned_alloc memalign valloc pvalloc malloc_usable_size.
 * Not handled: mremap, and mprotect of parts of a region (the kernel's
 * rules apply).
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

HL_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (likely(!hl_active || fd < 0 || (flags & (MAP_ANONYMOUS | MAP_FIXED | MAP_FIXED_NOREPLACE))))
        return r_mmap(addr, len, prot, flags, fd, off);
    return hl_mmap_file(addr, len, prot, flags, fd, off);
}

HL_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

HL_EXPORT int munmap(void *addr, size_t len)
{
    if (likely(atomic_load_explicit(&hl_nreg, memory_order_relaxed) == 0))
        return r_munmap(addr, len);
    return hl_munmap_slow(addr, len);
}

/* hl_range_op_slow returns an errno value (0: done); madvise, mlock and munlock return -1 and set errno. */
static inline int errno_result(int e)
{
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

HL_EXPORT int madvise(void *addr, size_t len, int adv)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_madvise(addr, len, adv);
    return errno_result(hl_range_op_slow(addr, len, OP_MADVISE, adv));
}

HL_EXPORT int posix_madvise(void *addr, size_t len, int adv)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_posix_madvise(addr, len, adv);
    return hl_range_op_slow(addr, len, OP_PMADVISE, adv);
}

HL_EXPORT int mlock(const void *addr, size_t len)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_mlock(addr, len);
    return errno_result(hl_range_op_slow((void *)addr, len, OP_MLOCK, 0));
}

HL_EXPORT int munlock(const void *addr, size_t len)
{
    if (!hl_maybe_managed((uintptr_t)addr, len))
        return r_munlock(addr, len);
    return errno_result(hl_range_op_slow((void *)addr, len, OP_MUNLOCK, 0));
}

HL_EXPORT void *malloc(size_t n)
{
    if (unlikely(n >= hl_alloc_thresh)) {
        void *p = hl_huge_alloc(n, 0, "malloc");
        if (p)
            return p;
    }
    return r_malloc(n);
}

HL_EXPORT void free(void *p)
{
    if (unlikely(may_be_huge_alloc(p))) {
        if (!p || hl_huge_free(p))
            return;
    }
    if (unlikely(in_arena(p)))
        return;
    r_free(p);
}

HL_EXPORT void *calloc(size_t n, size_t m)
{
    size_t t;
    if (unlikely(!__builtin_mul_overflow(n, m, &t) && t >= hl_alloc_thresh)) {
        void *p = hl_huge_alloc(t, 0, "calloc"); /* fresh anonymous pages are zero */
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
        void *q = malloc(n ? n : 1);
        if (q)
            memcpy(q, p, min_sz(n, arena_size_of(p)));
        return q;
    }
    return hl_realloc(p, n);
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
        void *p = hl_huge_alloc(n, align, "posix_memalign");
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
        void *p = hl_huge_alloc(n, align, "aligned_alloc");
        if (p)
            return p;
    }
    return r_aligned_alloc(align, n);
}

static void *memalign_as(size_t align, size_t n, const char *what)
{
    if (unlikely(n >= hl_alloc_thresh) && pow2(align)) {
        void *p = hl_huge_alloc(n, align, what);
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
    size_t cap = hl_huge_capacity(p);
    return cap ? cap : r_usable(p);
}
