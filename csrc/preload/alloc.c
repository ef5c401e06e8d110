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
 * gone.  When the 1 GB pool is short, an allocation takes the 1 GB pages it has and 2 MB pages
 * for the rest (hugemem.c): two regions side by side, seen here as one block.  What happens to
 * these regions at fork is fork.c's.
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>

void *hl_huge_alloc(size_t n, size_t align, const char *what)
{
    uint64_t t0 = hl_now_ns();
    hl_anon a[2];
    int parts = hl_anon_huge_parts(n, align, what, 1, a);
    if (!parts) {
        hl_record(what, n, n, PAGE_4K, ORIGIN_ALLOC, 0, 0, 0);
        return NULL;
    }
    if (a[0].fd >= 0)
        hl_os_close(a[0].fd); /* the map keeps the memfd alive */
    uint64_t ns = hl_now_ns() - t0;
    /* A report line per part: the bytes asked for that its pages hold. */
    size_t first = parts == 2 ? a[0].maplen : n, total = a[0].maplen + (parts == 2 ? a[1].maplen : 0);
    int rec = hl_record(what, first, a[0].maplen, a[0].page, ORIGIN_ALLOC, ns, (uintptr_t)a[0].p, 1);
    int rec2 = parts == 2 ? hl_record(what, n - first, a[1].maplen, a[1].page, ORIGIN_ALLOC, 0, (uintptr_t)a[1].p, 1)
                          : -1;
    hl_lock();
    hl_region *r = hl_region_add((uintptr_t)a[0].p, a[0].maplen, n, a[0].unit, ORIGIN_ALLOC, a[0].page, what, rec,
                                 PROT_READ | PROT_WRITE, HL_RF_PRIVATE_REF | (a[0].fd >= 0 ? HL_RF_SHARED : 0));
    hl_region *t = r && parts == 2 ? hl_region_add((uintptr_t)a[1].p, a[1].maplen, n - first, a[1].unit, ORIGIN_ALLOC,
                                                   a[1].page, what, rec2, PROT_READ | PROT_WRITE,
                                                   HL_RF_PRIVATE_REF | HL_RF_TAIL)
                                   : NULL;
    if (r && parts == 2 && !t) {
        hl_region_forget(r);
        r = NULL;
    }
    hl_unlock();
    if (!r) {
        hl_record_gone(rec);
        if (rec2 >= 0)
            hl_record_gone(rec2);
        hl_os_unmap((uintptr_t)a[0].p, total);
        return NULL;
    }
    hl_log(2, "%s: %zu bytes on %s%s pages (alloc) at %p, %.3f ms", what, n, hl_page_name[a[0].page],
           parts == 2 ? "+2M" : "", a[0].p, ns / 1e6);
    return a[0].p;
}

/* The allocation region at p (its first part), with the lock held and every part idle; NULL
 * (lock held) if none. */
static hl_region *alloc_region_idle(const void *p)
{
    hl_lock();
    for (;;) {
        hl_region *r = hl_alloc_region((uintptr_t)p), *t = r ? hl_alloc_tail(r) : NULL;
        if (!r || !hl_busy_overlaps(r->base, t ? t->base + t->maplen : r->base + r->maplen))
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
        hl_alloc_destroy(r, &rl);
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
    size_t cap = r ? hl_alloc_capacity(r) : 0;
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
    hl_region *r = hl_alloc_region((uintptr_t)p), *t = r ? hl_alloc_tail(r) : NULL;
    for (hl_region *part = r; part; part = part == r ? t : NULL) {
        size_t from = part->base - (uintptr_t)p;
        for (size_t off = 0; from + off < n && off < part->maplen; off += part->release_unit)
            if (!(hl_unit_get(part, off) & PROT_READ) && hl_region_mapped_at(part, off))
                hl_os_protect(part->base + round_down(off, part->release_unit), part->release_unit, PROT_READ);
    }
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
            if (r)
                hl_alloc_shrink(r, n, &rl);
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
