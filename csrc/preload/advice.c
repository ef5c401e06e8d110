/*
 * advice.c: munmap, madvise, posix_madvise, mlock and munlock on ranges that
 * may touch managed regions.
 *
 * A range is split into owned pieces and the rest (the real call).  On an
 * owned piece:
 *   THP regions (ordinary memory): the real call, always (MADV_DONTNEED
 *     really drops, mlock really locks).
 *   hugetlb regions:
 *     munmap: bookkeeping (regions.c), so 4 KB munmaps succeed;
 *     MADV_DONTFORK, DOFORK, WIPEONFORK, KEEPONFORK, DONTDUMP, DODUMP (VMA
 *       flags): the real call, widened to whole huge pages when the kernel
 *       refuses the 4 KB range (a hugetlb VMA splits only at huge page
 *       boundaries); WIPEONFORK, which the kernel refuses on hugetlb, and
 *       DONTFORK are also remembered for the fork handler (alloc.c);
 *     MADV_DONTNEED, MADV_REMOVE, MADV_FREE, MADV_DONTNEED_LOCKED on an
 *       allocation: the range is zeroed, as the kernel would leave it;
 *     other advice (WILLNEED, RANDOM, SEQUENTIAL, ...), mlock, munlock:
 *       success without effect (hugetlb pages are never swapped or read
 *       ahead; the kernel's own mlock skips hugetlb VMAs).
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>

#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#define MADV_KEEPONFORK 19
#endif

int hl_munmap_slow(void *addr, size_t len)
{
    uintptr_t a = (uintptr_t)addr;
    if ((a & (KB4 - 1)) || len == 0 || len > UINTPTR_MAX - a - KB4)
        return r_munmap(addr, len);
    uintptr_t b = round_up(a + len, KB4);
    if (b <= atomic_load(&hl_lo) || a >= atomic_load(&hl_hi))
        return r_munmap(addr, len);
    hl_lock();
    int err = hl_regions_munmap(a, b);
    hl_unlock();
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

static int real_op(int op, uintptr_t a, uintptr_t b, int adv)
{
    switch (op) {
    case OP_MADVISE:
        return r_madvise((void *)a, b - a, adv) ? errno : 0;
    case OP_PMADVISE:
        return r_posix_madvise((void *)a, b - a, adv);
    case OP_MLOCK:
        return r_mlock((void *)a, b - a) ? errno : 0;
    default:
        return r_munlock((void *)a, b - a) ? errno : 0;
    }
}

static int vma_flag_advice(int adv)
{
    return adv == MADV_DONTFORK || adv == MADV_DOFORK || adv == MADV_WIPEONFORK || adv == MADV_KEEPONFORK ||
           adv == MADV_DONTDUMP || adv == MADV_DODUMP;
}

/* An owned piece [a, b) of r. */
static int region_op(hl_region *r, uintptr_t a, uintptr_t b, int op, int adv)
{
    if (r->page == PAGE_THP || r->page == PAGE_4K)
        return real_op(op, a, b, adv);
    if (op != OP_MADVISE)
        return 0;
    if (vma_flag_advice(adv)) {
        int e = real_op(op, a, b, adv);
        if (e == EINVAL) {
            uintptr_t wa = round_down(a - r->base, r->release_unit) + r->base;
            uintptr_t wb = round_up(b - r->base, r->release_unit) + r->base;
            e = real_op(op, wa, wb, adv);
        }
        int whole = a == r->base && b >= r->base + r->maplen;
        if (adv == MADV_WIPEONFORK && e == EINVAL && r->origin == ORIGIN_ALLOC) {
            e = 0; /* emulated in the child */
            if (whole)
                r->flags |= HL_RF_WIPEONFORK;
            else
                e = EINVAL;
        }
        if (!e && whole) {
            if (adv == MADV_DONTFORK)
                r->flags |= HL_RF_DONTFORK;
            else if (adv == MADV_DOFORK)
                r->flags &= ~HL_RF_DONTFORK;
            else if (adv == MADV_KEEPONFORK)
                r->flags &= ~HL_RF_WIPEONFORK;
        }
        return e;
    }
    if (r->origin == ORIGIN_ALLOC &&
        (adv == MADV_DONTNEED || adv == MADV_REMOVE || adv == MADV_DONTNEED_LOCKED || adv == MADV_FREE))
        memset((void *)a, 0, b - a);
    return 0;
}

int hl_range_op_slow(void *addr, size_t len, int op, int adv)
{
    uintptr_t a = (uintptr_t)addr;
    if (op == OP_MLOCK || op == OP_MUNLOCK)
        a = round_down(a, KB4);
    else if (a & (KB4 - 1))
        return real_op(op, a, a + len, adv);
    uintptr_t b = round_up((uintptr_t)addr + len, KB4);
    int err = 0, e;
    hl_lock();
    uintptr_t cur = a;
    while (cur < b) {
        hl_region *r;
        uintptr_t s = hl_next_owned(cur, b, &r);
        if (s > cur) {
            if ((e = real_op(op, cur, s, adv)) && !err)
                err = e;
            cur = s;
            continue;
        }
        uintptr_t end = min_sz(b, hl_owned_run_end(r, cur));
        if ((e = region_op(r, cur, end, op, adv)) && !err)
            err = e;
        cur = end;
    }
    hl_unlock();
    return err;
}
