/*
 * alloc.c: large allocations on huge pages, and what happens to them at fork.
 *
 * malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc,
 * pvalloc, reallocarray of >= HUGELOAD_ALLOC_THRESHOLD bytes come from
 * hugemem.c's cascade, 2 MiB-aligned or more ("alloc"), pre-faulted.
 * realloc to a smaller size (still >= the threshold) keeps the block and
 * gives the whole pages past the new size back; below the threshold it moves
 * to the real allocator.
 *
 * Fork.  (1 GB pages are a shared map of a memfd of ours, hugemem.c: the
 * child reads them from the file, and must not keep writing to them.)
 * A MAP_PRIVATE hugetlb page shared by parent and child after fork
 * needs a fresh huge page on the first write; when the pool has none, the
 * kernel keeps the page for the parent (the reservation owner) and SIGBUSes
 * the child.  A child must never die where it would have lived without this
 * library, so the child's fork handler replaces each writable hugetlb
 * allocation by a private copy on ordinary (THP-advised) memory: it reads
 * the pages (memcpy: reads do not need new pages), and mremaps the copy over the
 * original address.  The parent's fork handler waits until the child is done
 * (a pipe), so the forking thread cannot make the parent write first and
 * take the page from the child; other parent threads can (they do not take
 * our lock to write memory): this narrow window is the remaining risk (for
 * 1 GB pages: the child's copy may see such a write).  A child made by a
 * raw clone() that runs no fork handlers shares 1 GB allocations with its
 * parent.
 * Why not the alternatives: MAP_SHARED anonymous hugetlb would make writes
 * visible across fork (changes the program's semantics); MADV_DONTFORK
 * alone leaves the child without the data; falling back to THP for every
 * allocation loses hugetlb for the common no-fork case.  The copy costs the
 * child time proportional to its parent's big allocations (exec right after
 * fork: use posix_spawn/vfork, which run no fork handlers).
 * MADV_DONTFORK on a whole allocation reaches the kernel (the child does not
 * get it, and forgets the region); MADV_WIPEONFORK, which the kernel refuses
 * on hugetlb, is emulated: the child gets fresh zero pages there.
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void *hl_huge_alloc(size_t n, size_t align, const char *what)
{
    int saved = errno;
    uint64_t t0 = hl_now_ns();
    hl_anon a;
    if (!hl_anon_huge(n, align, what, 1, &a)) {
        hl_record(what, n, n, PAGE_4K, ORIGIN_ALLOC, 0, 0, 0);
        errno = saved;
        return NULL;
    }
    if (a.fd >= 0)
        close(a.fd); /* the map keeps the memfd alive */
    uint64_t ns = hl_now_ns() - t0;
    int rec = hl_record(what, n, a.maplen, a.page, ORIGIN_ALLOC, ns, (uintptr_t)a.p, 1);
    hl_lock();
    hl_region *r = hl_region_add((uintptr_t)a.p, a.maplen, n, a.unit, ORIGIN_ALLOC, a.page, what, rec);
    if (r)
        r->flags |= HL_RF_WRITABLE | (a.fd >= 0 ? HL_RF_SHARED : 0);
    hl_unlock();
    if (!r) {
        hl_record_gone(rec);
        r_munmap(a.p, a.maplen);
        errno = saved;
        return NULL;
    }
    hl_log(2, "%s: %zu bytes on %s pages (alloc) at %p, %.3f ms", what, n, hl_page_name[a.page], a.p, ns / 1e6);
    errno = saved;
    return a.p;
}

int hl_huge_free(void *p)
{
    if (atomic_load_explicit(&hl_nalloc, memory_order_relaxed) == 0)
        return 0;
    hl_lock();
    hl_region *r = hl_alloc_region((uintptr_t)p);
    if (r)
        hl_region_destroy(r);
    hl_unlock();
    return r != NULL;
}

/* Capacity of our allocation at p, 0 if p is not one. */
size_t hl_huge_capacity(const void *p)
{
    if (!p || !may_be_huge_alloc(p) || atomic_load_explicit(&hl_nalloc, memory_order_relaxed) == 0)
        return 0;
    hl_lock();
    hl_region *r = hl_alloc_region((uintptr_t)p);
    size_t cap = r ? r->maplen : 0;
    hl_unlock();
    return cap;
}

void *hl_realloc(void *p, size_t n)
{
    size_t cap = hl_huge_capacity(p);
    if (cap) {
        if (n == 0) {
            hl_huge_free(p);
            return NULL;
        }
        if (n >= hl_alloc_thresh && n <= cap) {
            hl_lock();
            hl_region *r = hl_alloc_region((uintptr_t)p);
            if (r && hl_region_shrink(r, n) != 0)
                r->userlen = n;
            hl_unlock();
            return p;
        }
        void *q = n >= hl_alloc_thresh ? hl_huge_alloc(n, 0, "realloc") : NULL;
        if (!q)
            q = r_malloc(n);
        if (!q)
            return NULL;
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

/* ---- fork ------------------------------------------------------------- */

/* Child: [a, a+len) becomes ordinary private memory with the same contents
 * (wipe: zeros).  Units the child did not inherit (the program's own
 * MADV_DONTFORK on part of it, widened to whole units) stay unmapped.  0 or -1. */
static int privatize(uintptr_t a, size_t len, size_t unit, int wipe)
{
    char *tmp = r_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tmp == MAP_FAILED)
        return -1;
    r_madvise(tmp, len, MADV_HUGEPAGE);
    for (size_t off = 0; off < len; off += unit) {
        unsigned char v;
        size_t n = min_sz(unit, len - off);
        if (mincore((void *)(a + off), KB4, &v) != 0)
            r_munmap(tmp + off, n); /* not inherited: leave a hole, as the kernel did */
        else if (!wipe)
            memcpy(tmp + off, (void *)(a + off), n); /* reads need no new huge page */
    }
    if (mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)a) == MAP_FAILED) {
        r_munmap(tmp, len);
        return -1;
    }
    return 0;
}

/* Parent, before fork, under the lock: a sealed copy (read-only memfd map)
 * is about to be shared with the child, so from now on neither may punch its
 * pages out of the file (that would take them from the other); a unit given
 * back is then only unmapped, and its page returns when the last map goes. */
void hl_fork_prepare_regions(void)
{
    for (int i = 0; i < hl_reg_hwm; i++)
        if (hl_reg[i].in_use && (hl_reg[i].flags & HL_RF_SEALED))
            hl_reg[i].flags &= ~HL_RF_SHARED;
}

void hl_fork_child_regions(void)
{
    for (int i = 0; i < hl_reg_hwm; i++) {
        hl_region *r = &hl_reg[i];
        if (!r->in_use || (r->page != PAGE_1G && r->page != PAGE_2M) ||
            (r->origin != ORIGIN_ALLOC && r->origin != ORIGIN_COPY))
            continue;
        if (r->flags & HL_RF_DONTFORK) {
            hl_region_forget(r);
            continue;
        }
        if (!(r->flags & (HL_RF_WRITABLE | HL_RF_WIPEONFORK)))
            continue; /* read-only copies: nobody can write (sealed) or the child cannot without mprotect */
        int wipe = !!(r->flags & HL_RF_WIPEONFORK), ok = 1;
        uintptr_t cur = r->base, end = r->base + r->maplen;
        while (cur < end) {
            hl_region *o;
            uintptr_t s = hl_next_owned(cur, end, &o);
            if (s >= end || o != r)
                break;
            uintptr_t e = hl_owned_run_end(r, s);
            if (privatize(s, e - s, r->release_unit, wipe) != 0)
                ok = 0;
            cur = e;
        }
        if (!ok && (r->flags & HL_RF_SHARED)) {
            /* Still the parent's memfd pages: the child may read them, never write them. */
            mprotect((void *)r->base, r->maplen, PROT_READ);
            hl_warn_once(R_FORK, "%s could not be copied for the child: read-only there", r->what);
        } else if (!ok) {
            hl_warn_once(R_FORK, "%s could not be copied for the child: a write to it may fail", r->what);
        }
        r->flags &= ~(HL_RF_SHARED | HL_RF_SEALED); /* never punch what the parent may still map */
        if (!ok)
            continue;
        /* Ordinary memory now: give back in 4 KB units, report as THP. */
        r->page = PAGE_THP;
        r->release_unit = KB4;
    }
}
