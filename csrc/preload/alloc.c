/*
 * alloc.c: large allocations on huge pages.
 *
 * malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc,
 * pvalloc, reallocarray of >= HUGELOAD_ALLOC_THRESHOLD bytes come from
 * hugemem.c's cascade, 2 MiB-aligned or more ("alloc"), pre-faulted.
 * realloc to a smaller size (still >= the threshold) keeps the block and
 * gives the whole pages past the new size back; below the threshold it moves
 * to the real allocator; realloc(p, 0) frees p and returns NULL, as glibc's
 * does.  The capacity (malloc_usable_size, and how far realloc grows in
 * place) is the run of pages the region still owns from its start, so a
 * shrink that could not give everything back never hands out a page that is
 * gone.  What happens to these regions at fork is fork.c's.
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>

void *hl_huge_alloc(size_t n, size_t align, const char *what)
{
    uint64_t t0 = hl_now_ns();
    hl_anon a;
    if (!hl_anon_huge(n, align, what, 1, &a)) {
        hl_record(what, n, n, PAGE_4K, ORIGIN_ALLOC, 0, 0, 0);
        return NULL;
    }
    if (a.fd >= 0)
        hl_os_close(a.fd); /* the map keeps the memfd alive */
    uint64_t ns = hl_now_ns() - t0;
    int rec = hl_record(what, n, a.maplen, a.page, ORIGIN_ALLOC, ns, (uintptr_t)a.p, 1);
    hl_lock();
    hl_region *r = hl_region_add((uintptr_t)a.p, a.maplen, n, a.unit, ORIGIN_ALLOC, a.page, what, rec,
                                 PROT_READ | PROT_WRITE, HL_RF_PRIVATE_REF | (a.fd >= 0 ? HL_RF_SHARED : 0));
    hl_unlock();
    if (!r) {
        hl_record_gone(rec);
        hl_os_unmap((uintptr_t)a.p, a.maplen);
        return NULL;
    }
    hl_log(2, "%s: %zu bytes on %s pages (alloc) at %p, %.3f ms", what, n, hl_page_name[a.page], a.p, ns / 1e6);
    return a.p;
}

/* The allocation region at p, with the lock held and its span idle; NULL (lock held) if none. */
static hl_region *alloc_region_idle(const void *p)
{
    hl_lock();
    for (;;) {
        hl_region *r = hl_alloc_region((uintptr_t)p);
        if (!r || !hl_busy_overlaps(r->base, r->base + r->maplen))
            return r;
        hl_wait();
    }
}

int hl_huge_free(void *p)
{
    if (atomic_load_explicit(&hl_nalloc, memory_order_relaxed) == 0)
        return 0;
    hl_release_list rl;
    rl.n = rl.nk = rl.kernel_err = 0;
    hl_region *r = alloc_region_idle(p);
    if (r)
        hl_region_destroy(r, &rl);
    hl_unlock_release(&rl);
    return r != NULL;
}

/* Capacity of our allocation at p, 0 if p is not one: the pages it owns from its start (how far
 * realloc grows in place), or for malloc_usable_size (`usable`) at least the size asked for,
 * whatever the program did to its pages since (glibc reads the size from the block's header). */
size_t hl_huge_capacity(const void *p, int usable)
{
    if (!p || !may_be_huge_alloc(p) || atomic_load_explicit(&hl_nalloc, memory_order_relaxed) == 0)
        return 0;
    hl_lock();
    hl_region *r = hl_alloc_region((uintptr_t)p);
    size_t cap = r ? hl_region_capacity(r) : 0;
    if (r && usable)
        cap = max_sz(cap, r->userlen);
    hl_unlock();
    return cap;
}

/* The old block is read once more, then freed: pages the program made unreadable are made readable
 * for that copy (glibc moves a big block with mremap, which reads nothing). */
static void readable(void *p, size_t n)
{
    hl_lock();
    hl_region *r = hl_alloc_region((uintptr_t)p);
    for (size_t off = 0; r && off < n; off += r->release_unit)
        if (!(hl_unit_get(r, off) & PROT_READ) && hl_region_mapped_at(r, off))
            hl_os_protect(r->base + round_down(off, r->release_unit), r->release_unit, PROT_READ);
    hl_unlock();
}

void *hl_realloc(void *p, size_t n)
{
    size_t cap = hl_huge_capacity(p, 0);
    if (cap) {
        if (n == 0) {
            hl_huge_free(p);
            return NULL;
        }
        if (n >= hl_alloc_thresh && n <= cap) {
            hl_release_list rl;
            rl.n = rl.nk = rl.kernel_err = 0;
            hl_region *r = alloc_region_idle(p);
            if (r && hl_region_shrink(r, n, &rl) != 0)
                r->userlen = n;
            hl_unlock_release(&rl);
            return p;
        }
        void *q = n >= hl_alloc_thresh ? hl_huge_alloc(n, 0, "realloc") : NULL;
        if (!q)
            q = r_malloc(n);
        if (!q)
            return NULL;
        readable(p, min_sz(n, cap));
        memcpy(q, p, min_sz(n, cap));
        hl_huge_free(p);
        return q;
    }
    if (unlikely(n >= hl_alloc_thresh)) {
        void *q = hl_huge_alloc(n, 0, "realloc");
        if (q) {
            memcpy(q, p, min_sz(n, r_usable(p)));
            r_free(p);
            return q;
        }
    }
    return r_realloc(p, n);
}
