/*
 * demote.c: a managed range handed back to ordinary memory.
 *
 * Some calls have no meaning on a huge page that the kernel would give them
 * on the program's own mapping: mprotect or MADV_DONTFORK of 4 KB inside a
 * huge page, MADV_DONTNEED on a private file map (the pages go back to the
 * file's contents), mremap, MAP_FIXED over part of a region, a write to
 * memory a forked child shares.  For those, the units involved (whole huge
 * pages) are demoted first, then the call is forwarded to the kernel, which
 * then answers exactly as it would have without the library.  Demoting a unit:
 *   - a file region (copy, staged) has the kernel's own mapping of its file
 *     beside it, PROT_NONE (the "shadow", made by filemap.c with the program's
 *     own flags): the unit's contents are copied into that piece of the
 *     shadow (a copy only: a staged file never differs from its source), the
 *     piece gets the unit's protection, lock and fork advice, and is moved
 *     over the unit with one mremap(MREMAP_FIXED), which replaces the huge
 *     page atomically;
 *   - an allocation gets private anonymous memory the same way (zeros for a
 *     child's MADV_WIPEONFORK unit);
 *   - a THP allocation or a program's own hugetlbfs map is already what the
 *     kernel would have: the library just stops owning it.
 * Pages of the unit the program had unmapped are unmapped after the move.
 * The copy runs with the lock released and the unit busy (regions.c): other
 * threads that need it wait.  A store another thread makes to the same unit
 * during the copy can be lost; so can be the protection of a unit being
 * copied when another thread changes it then: both need a data race in the
 * program on that very huge page.  A 1 GB memfd unit no child shares is
 * punched out of its file before the move.
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>

#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Applies the state bits of unit `u` to ordinary memory at [p, p + len). */
static void apply_state(uintptr_t p, size_t len, unsigned u, int anon)
{
    hl_os_protect(p, len, (int)(u & HL_U_PROT));
    if (u & HL_U_DONTFORK)
        hl_os_advise(p, len, MADV_DONTFORK);
    if ((u & HL_U_WIPEONFORK) && anon)
        hl_os_advise(p, len, MADV_WIPEONFORK);
}

/* How many bytes at the start of [p, p + n) of a private file map can be written: pages past
 * the end of the file raise SIGBUS (MADV_POPULATE_WRITE says EFAULT there instead). */
static size_t writable_prefix(uintptr_t p, size_t n)
{
    int e = hl_os_advise(p, n, MADV_POPULATE_WRITE);
    if (e != EFAULT)
        return n; /* 0, or a kernel without populate (EINVAL): everything is inside the file */
    size_t lo = 0, hi = n / KB4; /* pages [0, lo) are fine, page hi is not */
    while (lo + 1 < hi) {
        size_t mid = (lo + hi) / 2;
        if (hl_os_advise(p + mid * KB4, KB4, MADV_POPULATE_WRITE) == 0)
            lo = mid;
        else
            hi = mid;
    }
    return hl_os_advise(p + lo * KB4, KB4, MADV_POPULATE_WRITE) == 0 ? (lo + 1) * KB4 : lo * KB4;
}

/* Moves dst over the units at src, replacing their huge pages in one step: one mremap when dst is
 * one mapping; a shadow piece that straddles the end of the file is two (the file's map, then
 * the reservation past it): an anonymous placeholder replaces the units first, then each moves. */
static int place(const hl_region *r, uintptr_t dst, uintptr_t src, size_t len, int anon)
{
    uintptr_t f = r->shadow + r->shadow_file;
    if (anon || dst + len <= f || dst >= f)
        return hl_os_remap((void *)dst, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)src) ? 0 : -1;
    if (!hl_os_map_anon((void *)src, len, PROT_NONE, MAP_FIXED | MAP_NORESERVE))
        return -1;
    size_t first = f - dst;
    if (!hl_os_remap((void *)dst, first, first, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)src))
        return -1;
    return hl_os_remap((void *)f, len - first, len - first, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(src + first)) ? 0
                                                                                                                : -1;
}

int hl_demote_units(hl_region *r, size_t ua, size_t ub, int wipe)
{
    uintptr_t src = r->base + ua;
    size_t len = ub - ua;
    if (hl_busy_overlaps(src, src + len)) {
        hl_wait();
        return EAGAIN; /* the caller looks again: the table may have changed */
    }
    if (hl_unit_ordinary(r, ua))
        return 0; /* ordinary memory already */
    if (r->origin == ORIGIN_DIRECT) {
        hl_region_drop(r, ua, ub); /* the program's own hugetlbfs map: the kernel's rules already */
        return 0;
    }
    int anon = !r->shadow;
    int copy = !wipe && r->origin != ORIGIN_STAGED;
    uintptr_t dst = anon ? (uintptr_t)hl_os_map_anon(NULL, len, PROT_READ | PROT_WRITE, 0) : r->shadow + ua;
    if (!dst)
        return errno;
    if (anon)
        hl_os_advise(dst, len, MADV_HUGEPAGE); /* ordinary memory, THP where it can */
    if (copy) {
        if (hl_busy_add(src, src + len) != 0 || (!anon && hl_os_protect(dst, len, PROT_READ | PROT_WRITE) != 0)) {
            int e = errno ? errno : EAGAIN;
            hl_busy_del(src, src + len);
            if (anon)
                hl_os_unmap(dst, len);
            return e;
        }
        for (size_t off = ua; off < ub; off += r->release_unit)
            if (!(hl_unit_get(r, off) & PROT_READ))
                hl_os_protect(r->base + off, r->release_unit, PROT_READ); /* replaced below anyway */
        /* A shadow maps the file up to the program's length; past it (padding) nothing to copy. */
        size_t unit = r->release_unit, end = anon ? len : r->shadow_file > ua ? min_sz(len, r->shadow_file - ua) : 0;
        hl_unlock();
        for (size_t off = 0; off < end; off += unit) {
            size_t want = min_sz(unit, end - off), n = anon ? want : writable_prefix(dst + off, want);
            memcpy((void *)(dst + off), (void *)(src + off), n);
            if (n < want)
                break; /* past the end of the file: the kernel's map raises SIGBUS there, as it would have */
        }
        hl_lock();
        hl_busy_del(src, src + len);
        hl_wake();
    }
    int punch = (r->flags & HL_RF_SHARED) != 0;
    for (size_t off = ua; off < ub; off += r->release_unit)
        if (hl_unit_get(r, off) & HL_U_FORKED)
            punch = 0;
    if (punch)
        hl_os_punch(src, len);
    if (place(r, dst, src, len, anon) != 0) {
        int e = errno;
        hl_warn_once(R_DEMOTE, "moving ordinary memory over %s at %p failed (%s)", r->what, (void *)src,
                     strerror(e));
        if (anon)
            hl_os_unmap(dst, len);
        else
            hl_os_protect(dst, len, PROT_NONE);
        return e;
    }
    for (size_t off = ua; off < ub; off += r->release_unit) {
        unsigned u = hl_unit_get(r, off);
        apply_state(r->base + off, r->release_unit, wipe ? (u & ~HL_U_WIPEONFORK) : u, anon);
    }
    const hl_iv *lk = hl_ivs_data(&r->locked); /* the locks the program took, 4 KB exact */
    for (size_t i = 0; i < r->locked.n; i++) {
        size_t a = max_sz(lk[i].a, ua), b = min_sz(lk[i].b, ub);
        if (a < b)
            hl_os_lock(r->base + a, b - a, 1);
    }
    if (!anon)
        hl_ivs_add(&r->shadow_moved, ua, ub);
    /* The program's holes in these units are its holes again (unmapped once the lock goes). */
    for (size_t off = ua; off < ub;) {
        size_t end = max_sz(hl_region_same_run_end(r, off, ub), off + KB4);
        if (!hl_region_mapped_at(r, off))
            hl_defer_unmap(r->base + off, end - off);
        off = end;
    }
    hl_log(2, "%s: %zu bytes at %p handed to ordinary memory", r->what, len, (void *)src);
    if (r->origin == ORIGIN_ALLOC) /* still the allocation's: free() unmaps it, usable size counts it */
        hl_unit_set(r, ua, ub, HL_U_WIPEONFORK, HL_U_ORDINARY);
    else
        hl_region_drop(r, ua, ub);
    return 0;
}

int hl_demote_range(uintptr_t a, uintptr_t b)
{
    uintptr_t cur = a;
    for (int tries = 0; cur < b && tries < 1000000; tries++) {
        hl_region *r;
        uintptr_t s = hl_next_owned(cur, b, &r);
        if (s >= b || !r)
            return 0;
        uintptr_t e = min_sz(b, hl_owned_run_end(r, s));
        size_t ua = round_down(s - r->base, r->release_unit), end = min_sz(round_up(e - r->base, r->release_unit), r->maplen);
        while (ua < end && hl_unit_ordinary(r, ua))
            ua += r->release_unit;
        if (ua >= end) {
            cur = e;
            continue;
        }
        size_t ub = ua;
        while (ub < end && !hl_unit_ordinary(r, ub))
            ub += r->release_unit;
        int err = hl_demote_units(r, ua, ub, 0);
        if (err && err != EAGAIN)
            return err;
        cur = a; /* the table may have changed: look again */
    }
    return cur < b ? EAGAIN : 0;
}

void hl_replaced_range(uintptr_t a, uintptr_t b)
{
    for (uintptr_t cur = a; cur < b;) {
        hl_region *r;
        uintptr_t s = hl_next_owned(cur, b, &r);
        if (s >= b || !r)
            return;
        uintptr_t e = min_sz(b, hl_owned_run_end(r, s));
        hl_region_unmap(r, s - r->base, e - r->base, NULL, 0);
        cur = e;
    }
}
