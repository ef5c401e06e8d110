/*
 * advice.c: munmap, madvise, posix_madvise, mlock, munlock, mprotect, mremap
 * and MAP_FIXED on ranges that may touch managed regions.
 *
 * A range is walked in order, as the kernel walks its VMAs: pieces nobody
 * owns get the real call; owned pieces the program still maps get what the
 * kernel would have done to the program's own mapping (below); pieces the
 * program has unmapped are holes (ENOMEM, and mprotect/mlock stop there, as
 * the kernel does).  When a piece needs what the library cannot do on a huge
 * page, its units are demoted (demote.c) and the walk starts again: from then
 * on the kernel answers for them.
 *
 * On an owned piece the program still maps:
 *   THP allocations, and the program's own hugetlbfs maps ("direct"): the
 *     real call (ordinary memory, or the kernel's hugetlb rules already).
 *   munmap: bookkeeping (regions.c); whole units go back after the lock.
 *   mprotect: the real call on whole huge pages; part of one, or write
 *     access to a unit a forked process shares, or a private map of a staged
 *     file (EACCES on the shared staged copy): demote, then the real call.
 *   mlock/munlock on hugetlb: recorded (the kernel does not lock hugetlb VMAs,
 *     but a locked range refuses MADV_DONTNEED/FREE/COLD/PAGEOUT).
 *   madvise: what the kernel does to the map this one stands for (anonymous
 *     private for allocations, private or shared file for copies and staged
 *     maps), from the table in advice_action() (tests/difftest checks it):
 *     hints go to the huge page; MADV_DONTNEED on an allocation zeroes (a
 *     hugetlb page dropped would need a new one from the pool: SIGBUS when
 *     empty), on a copy it demotes (the pages go back to the file);
 *     MADV_DONTFORK/DOFORK/WIPEONFORK on whole units are recorded for fork.c,
 *     on part of one they demote; answers the kernel gives the stood-for map
 *     and not hugetlb (EINVAL, EACCES, 0) are given.
 *   mremap: the units of the old range and of a MREMAP_FIXED target are
 *     demoted, then the real call.
 *   MAP_FIXED over owned pieces: demoted, then the real call;
 *     MAP_FIXED_NOREPLACE fails with EEXIST if the program maps any of them.
 * Zeroing runs with the lock released on a busy range.
 */
#include "hl.h"

#include <string.h>
#include <sys/mman.h>

#ifndef MADV_FREE
#define MADV_FREE 8
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#define MADV_KEEPONFORK 19
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#define DEMOTE_NEEDED (-1)

/* ---- releases after the lock ----------------------------------------------- */

void hl_release_run(hl_release_list *rl)
{
    for (int i = 0; i < rl->nk; i++)
        if (hl_os_unmap(rl->kernel_a[i], rl->kernel_len[i]) != 0 && !rl->kernel_err)
            rl->kernel_err = errno;
    rl->nk = 0;
    for (int i = 0; i < rl->n; i++) {
        hl_release *x = &rl->v[i];
        x->ok = hl_os_release(x->a, x->len, x->punch) == 0;
    }
}

void hl_unlock_release(hl_release_list *rl)
{
    hl_unlock();
    hl_release_run(rl);
    if (rl->n) {
        hl_lock();
        hl_release_done(rl);
        hl_unlock();
    }
}

int hl_munmap_slow(void *addr, size_t len)
{
    uintptr_t a = (uintptr_t)addr;
    if ((a & (KB4 - 1)) || len == 0 || len > UINTPTR_MAX - a - KB4)
        return r_munmap(addr, len);
    uintptr_t b = round_up(a + len, KB4);
    if (b <= atomic_load(&hl_lo) || a >= atomic_load(&hl_hi))
        return r_munmap(addr, len);
    hl_release_list rl;
    rl.n = rl.nk = rl.kernel_err = 0;
    hl_lock_idle(a, b);
    hl_regions_munmap(a, b, &rl);
    hl_unlock_release(&rl);
    if (rl.kernel_err) {
        errno = rl.kernel_err;
        return -1;
    }
    return 0;
}

/* ---- what a call means on an owned piece ----------------------------------- */

/* The map a region stands for. */
enum { C_REAL, C_ANON, C_PRIV, C_SHARED, C_PRIV_THP };

static int region_class(const hl_region *r)
{
    if (r->origin == ORIGIN_DIRECT)
        return C_REAL;
    if (r->page == PAGE_THP)
        return r->origin == ORIGIN_ALLOC ? C_REAL : C_PRIV_THP;
    if (r->origin == ORIGIN_ALLOC)
        return C_ANON;
    return (r->flags & HL_RF_PRIVATE_REF) ? C_PRIV : C_SHARED;
}

enum {
    A_REAL,     /* the real call on the piece */
    A_WIDEN,    /* the real call on the whole huge pages around it (a hint: same meaning) */
    A_ZERO,     /* zero it (MADV_DONTNEED on anonymous memory) */
    A_OK,       /* nothing to do: 0 */
    A_EINVAL,   /* what the kernel answers for the stood-for map */
    A_EACCES,
    A_LOCKED_EINVAL, /* EINVAL on a locked range, else 0 (MADV_FREE, COLD, PAGEOUT) */
    A_DEMOTE,
    A_FLAG,     /* whole units: the real call and a fork flag; part of a unit: demote */
};

static int advice_action(int adv, int cls)
{
    if (cls == C_REAL)
        return A_REAL;
    int thp = cls == C_PRIV_THP;
    switch (adv) {
    case MADV_NORMAL:
    case MADV_RANDOM:
    case MADV_SEQUENTIAL:
    case MADV_WILLNEED:
    case MADV_MERGEABLE:
    case MADV_UNMERGEABLE:
    case MADV_HUGEPAGE:
    case MADV_NOHUGEPAGE:
    case MADV_DONTDUMP:
    case MADV_DODUMP:
    case MADV_POPULATE_READ:
    case MADV_POPULATE_WRITE:
        return thp ? A_REAL : A_WIDEN;
    case MADV_DONTNEED:
    case MADV_DONTNEED_LOCKED:
        return cls == C_ANON ? A_ZERO : cls == C_SHARED ? A_OK : A_DEMOTE;
    case MADV_FREE:
        return cls == C_ANON ? A_LOCKED_EINVAL : A_EINVAL;
    case MADV_REMOVE:
        return cls == C_ANON ? A_EINVAL : A_EACCES;
    case MADV_DONTFORK:
    case MADV_DOFORK:
        return thp ? A_REAL : A_FLAG;
    case MADV_WIPEONFORK:
        return cls == C_ANON ? A_FLAG : A_EINVAL;
    case MADV_KEEPONFORK:
        return cls == C_ANON ? A_FLAG : thp ? A_REAL : A_OK;
    case MADV_COLD:
    case MADV_PAGEOUT:
        return thp ? A_REAL : A_LOCKED_EINVAL;
    default: /* COLLAPSE, guard regions, and what this table does not know */
        return A_DEMOTE;
    }
}

static int known_advice(int adv)
{
    return (adv >= MADV_NORMAL && adv <= MADV_DONTNEED) || (adv >= MADV_FREE && adv <= MADV_COLLAPSE) ||
           adv == 102 || adv == 103; /* MADV_GUARD_INSTALL/REMOVE */
}

static int real_op(int op, uintptr_t a, uintptr_t b, int arg)
{
    switch (op) {
    case OP_MADVISE:
    case OP_PMADVISE:
        return hl_os_advise(a, b - a, arg);
    case OP_MLOCK:
    case OP_MUNLOCK:
        return hl_os_lock(a, b - a, op == OP_MLOCK);
    case OP_MLOCK_NOFAULT:
        return hl_os_lock_nofault(a, b - a);
    case OP_MSYNC:
        return hl_os_sync(a, b - a, arg);
    default:
        return hl_os_protect(a, b - a, arg) ? errno : 0;
    }
}

/* Whether every unit of r overlapping [s, e) has all of `bits` (any = 0) or none (any = 1). */
static int units_have(const hl_region *r, uintptr_t s, uintptr_t e, unsigned bits, int any)
{
    for (size_t off = round_down(s - r->base, r->release_unit); off < e - r->base; off += r->release_unit) {
        unsigned u = hl_unit_get(r, off);
        if (any && (u & bits))
            return 1;
        if (!any && (u & bits) != bits)
            return 0;
    }
    return !any;
}

static int locked_in(const hl_region *r, uintptr_t s, uintptr_t e)
{
    return hl_ivs_overlaps(&r->locked, s - r->base, e - r->base);
}

static int whole_units(const hl_region *r, uintptr_t s, uintptr_t e)
{
    return ((s - r->base) % r->release_unit) == 0 && (((e - r->base) % r->release_unit) == 0 || e == r->base + r->maplen);
}

static int set_units(hl_region *r, uintptr_t s, uintptr_t e, unsigned clear, unsigned set)
{
    return hl_unit_set(r, s - r->base, e - r->base, clear, set) ? ENOMEM : 0;
}

/* [s, e) owned by r and mapped by the program.  An errno value, 0, DEMOTE_NEEDED, or 1 with
 * *zero set: the caller zeroes [s, e) outside the lock. */
static int region_op(hl_region *r, uintptr_t s, uintptr_t e, int op, int arg, int *zero)
{
    int cls = region_class(r);
    if (op == OP_MPROTECT) {
        if (cls == C_REAL || cls == C_PRIV_THP) {
            int err = real_op(op, s, e, arg);
            return err ? err : cls == C_PRIV_THP ? set_units(r, s, e, HL_U_PROT, (unsigned)arg & HL_U_PROT) : 0;
        }
        if (!whole_units(r, s, e) || ((arg & PROT_WRITE) && units_have(r, s, e, HL_U_FORKED, 1)))
            return DEMOTE_NEEDED;
        int err = real_op(op, s, e, arg);
        if (err == EACCES && cls != C_SHARED)
            return DEMOTE_NEEDED; /* a staged copy is mapped read-only: the private map it stands for is not */
        return err ? err : set_units(r, s, e, HL_U_PROT, (unsigned)arg & HL_U_PROT);
    }
    if (op == OP_MSYNC) { /* private copies and anonymous memory have nothing to write back */
        if (cls == C_REAL || r->origin == ORIGIN_DIRECT)
            return real_op(op, s, e, arg);
        return ((arg & MS_INVALIDATE) && locked_in(r, s, e)) ? EBUSY : 0;
    }
    if (op == OP_MLOCK || op == OP_MUNLOCK || op == OP_MLOCK_NOFAULT) {
        size_t a = s - r->base, b = e - r->base;
        int lock = op != OP_MUNLOCK;
        if (cls == C_REAL || cls == C_PRIV_THP) { /* the kernel locks it; kept here too, for MADV_DONTNEED below */
            int err = real_op(op, s, e, arg);
            /* ENOMEM from mlock of a mapped range: a page it could not fault in, the range is locked
             * all the same (seed 2135: MADV_DONTNEED there then said 0, where the kernel says EINVAL) */
            if (!err || (err == ENOMEM && op == OP_MLOCK))
                (void)(lock ? hl_ivs_add(&r->locked, a, b) : hl_ivs_sub(&r->locked, a, b));
            return err;
        }
        int err = (lock ? hl_ivs_add(&r->locked, a, b) : hl_ivs_sub(&r->locked, a, b)) ? ENOMEM : 0;
        /* mlock faults the pages in: it cannot on PROT_NONE ones (ENOMEM, the range stays locked) */
        for (size_t off = round_down(a, r->release_unit); !err && op == OP_MLOCK && off < b; off += r->release_unit)
            if (!(hl_unit_get(r, off) & HL_U_PROT))
                err = ENOMEM;
        return err;
    }
    int act = advice_action(arg, cls);
    int locked = locked_in(r, s, e);
    /* the map a private copy stands for is locked: the kernel refuses MADV_DONTNEED there (a
     * demotion would map the file afresh, unlocked, and drop the pages: seeds 1086, 1099) */
    if (act == A_DEMOTE && arg == MADV_DONTNEED && locked)
        return EINVAL;
    switch (act) {
    case A_REAL: {
        int err = real_op(op, s, e, arg);
        if (!err && (arg == MADV_DONTFORK || arg == MADV_DOFORK)) /* fork.c: what a child lacks */
            set_units(r, s, e, HL_U_DONTFORK, arg == MADV_DONTFORK ? HL_U_DONTFORK : 0);
        return err;
    }
    case A_WIDEN: {
        uintptr_t ws = r->base + round_down(s - r->base, r->release_unit);
        uintptr_t we = r->base + min_sz(round_up(e - r->base, r->release_unit), r->maplen);
        return real_op(op, ws, we, arg);
    }
    case A_ZERO:
        if (arg == MADV_DONTNEED && locked)
            return EINVAL;
        if (!units_have(r, s, e, PROT_WRITE, 0) || units_have(r, s, e, HL_U_FORKED, 1))
            return DEMOTE_NEEDED;
        *zero = 1;
        return 1;
    case A_OK:
        return (arg == MADV_DONTNEED && locked) ? EINVAL : 0;
    case A_EINVAL:
        return EINVAL;
    case A_EACCES:
        return locked ? EINVAL : EACCES;
    case A_LOCKED_EINVAL:
        return locked ? EINVAL : 0;
    case A_FLAG: {
        if (!whole_units(r, s, e))
            return DEMOTE_NEEDED;
        if (arg == MADV_DONTFORK || arg == MADV_DOFORK) {
            int err = real_op(op, s, e, arg);
            return err ? err : set_units(r, s, e, HL_U_DONTFORK, arg == MADV_DONTFORK ? HL_U_DONTFORK : 0);
        }
        return set_units(r, s, e, HL_U_WIPEONFORK, arg == MADV_WIPEONFORK ? HL_U_WIPEONFORK : 0);
    }
    default:
        return DEMOTE_NEEDED;
    }
}

/* A piece of ordinary memory an allocation still owns: the real call; fork needs DONTFORK. */
static int real_ordinary(hl_region *r, uintptr_t s, uintptr_t e, int op, int arg)
{
    int err = real_op(op, s, e, arg);
    if (!err && op == OP_MADVISE && (arg == MADV_DONTFORK || arg == MADV_DOFORK))
        set_units(r, s, e, HL_U_DONTFORK, arg == MADV_DONTFORK ? HL_U_DONTFORK : 0);
    if (!err && op == OP_MPROTECT)
        set_units(r, s, e, HL_U_PROT, (unsigned)arg & HL_U_PROT);
    return err;
}

/* Zeroes [s, e) with the lock released, the range busy; the lock is held again after. */
static void zero_outside(uintptr_t s, uintptr_t e)
{
    if (hl_busy_add(s, e) != 0) {
        memset((void *)s, 0, e - s); /* the busy table is full: under the lock, rarely */
        return;
    }
    hl_unlock();
    memset((void *)s, 0, e - s);
    hl_lock();
    hl_busy_del(s, e);
    hl_wake();
}

int hl_range_op_slow(void *addr, size_t len, int op, int arg)
{
    uintptr_t a = (uintptr_t)addr;
    if (op == OP_PMADVISE) {
        if (arg == POSIX_MADV_DONTNEED)
            return 0; /* glibc: a no-op, no system call */
        op = OP_MADVISE;
    }
    if (op == OP_MLOCK || op == OP_MUNLOCK) {
        len = round_up(len + (a & (KB4 - 1)), KB4);
        a = round_down(a, KB4);
    } else if ((a & (KB4 - 1)) || (op == OP_MADVISE && !known_advice(arg)) ||
               (op == OP_MPROTECT && (arg & ~(PROT_READ | PROT_WRITE | PROT_EXEC))) ||
               (op == OP_MSYNC && ((arg & ~(MS_ASYNC | MS_SYNC | MS_INVALIDATE)) ||
                                   (arg & (MS_ASYNC | MS_SYNC)) == (MS_ASYNC | MS_SYNC)))) {
        return real_op(op, a, a + len, arg); /* the kernel's EINVAL, before anything happens */
    }
    if (len == 0)
        return 0;
    uintptr_t b = round_up(a + len, KB4);
    if (b < a)
        return op == OP_MADVISE ? EINVAL : ENOMEM;
    hl_lock_idle(a, b);
    int op0 = op;
restart:;
    /* unfaulted: mlock could not fault a page in (PROT_NONE).  The kernel marks the whole range
     * locked before it faults anything, and stops faulting at the first failure: so the walk goes
     * on, locking without faulting, and answers ENOMEM at the end (seed 6136: a locked copy after
     * a demoted unit with a PROT_NONE page stayed unlocked, and msync(MS_INVALIDATE) said 0, not EBUSY) */
    int err = 0, hole = 0, unfaulted = 0;
    uintptr_t cur = a;
    op = op0;
    while (cur < b && !err) {
        hl_region *r;
        uintptr_t s = hl_next_owned(cur, b, &r);
        /* madvise and msync go on past a hole (ENOMEM at the end; msync(MS_ASYNC) stops there) */
        int past_holes = op == OP_MADVISE || (op == OP_MSYNC && arg != MS_ASYNC);
        if (s > cur) {
            int e = real_op(op, cur, s, arg);
            if (e == ENOMEM && past_holes)
                hole = 1;
            else if (e == ENOMEM && op == OP_MLOCK && !hl_os_hole(cur, s - cur))
                unfaulted = 1, op = OP_MLOCK_NOFAULT;
            else
                err = e;
            cur = s;
            continue;
        }
        uintptr_t end = min_sz(b, hl_owned_run_end(r, cur));
        uintptr_t m = r->base + hl_region_same_run_end(r, cur - r->base, end - r->base);
        if (m <= cur)
            m = cur + KB4;
        if (!hl_region_mapped_at(r, cur - r->base)) {
            if (past_holes)
                hole = 1;
            else
                err = ENOMEM;
            cur = m;
            continue;
        }
        /* One piece per run of units in the same state, as the kernel walks one VMA at a time (the
         * program's mprotect, mlock and madvise split its map where they differ); allocation units
         * handed to ordinary memory get the real call, as THP does. */
        unsigned st = hl_unit_get(r, cur - r->base);
        int ord = hl_unit_ordinary(r, cur - r->base);
        for (uintptr_t u = r->base + round_down(cur - r->base, r->release_unit) + r->release_unit; u < m;
             u += r->release_unit)
            if (hl_unit_get(r, u - r->base) != st) {
                m = u;
                break;
            }
        m = r->base + hl_ivs_boundary(&r->locked, cur - r->base, m - r->base);
        int zero = 0;
        int e = ord ? real_ordinary(r, cur, m, op, arg) : region_op(r, cur, m, op, arg, &zero);
        if (e == DEMOTE_NEEDED) {
            size_t ua = round_down(cur - r->base, r->release_unit);
            size_t ub = min_sz(round_up(m - r->base, r->release_unit), r->maplen);
            int de = hl_demote_units(r, ua, ub, 0);
            if (de && de != EAGAIN) {
                err = de;
                break;
            }
            if (hl_defer_pending()) { /* the holes the units had go first: they are holes to the kernel too */
                hl_unlock();
                hl_lock_idle(a, b);
            }
            goto restart; /* the kernel answers for those units now */
        }
        if (zero) {
            zero_outside(cur, m);
            cur = m;
            continue;
        }
        if (e == ENOMEM && op == OP_MLOCK) /* mapped, so a page that could not be faulted in */
            unfaulted = 1, op = OP_MLOCK_NOFAULT;
        else
            err = e;
        cur = m;
    }
    hl_unlock();
    return err ? err : (hole || unfaulted) ? ENOMEM : 0;
}

/* ---- mremap and MAP_FIXED --------------------------------------------------- */

static void lock_idle2(uintptr_t a1, uintptr_t b1, uintptr_t a2, uintptr_t b2)
{
    hl_lock();
    while (hl_busy_overlaps(a1, b1) || hl_busy_overlaps(a2, b2))
        hl_wait();
}

void *hl_mremap_slow(void *old, size_t oldlen, size_t newlen, int flags, void *to)
{
    uintptr_t a = round_down((uintptr_t)old, KB4), b = round_up((uintptr_t)old + max_sz(oldlen, 1), KB4);
    uintptr_t ta = 0, tb = 0;
    if (flags & MREMAP_FIXED)
        ta = round_down((uintptr_t)to, KB4), tb = round_up((uintptr_t)to + newlen, KB4);
    if (b < a || tb < ta)
        return r_mremap(old, oldlen, newlen, flags, to);
    lock_idle2(a, b, ta, tb);
    int e;
    for (;;) {
        e = hl_demote_range(a, b);
        if (!e && tb > ta)
            e = hl_demote_range(ta, tb);
        if (e || !hl_defer_pending())
            break;
        hl_unlock(); /* the holes demoted units had go first */
        lock_idle2(a, b, ta, tb);
    }
    void *p = MAP_FAILED;
    if (!e)
        p = r_mremap(old, oldlen, newlen, flags, to);
    else
        errno = e;
    int saved = errno;
    if (p != MAP_FAILED) { /* what moved or went is no longer where the allocations had it */
        if (p != old && !(flags & MREMAP_DONTUNMAP))
            hl_replaced_range(a, b);
        else if (p == old && newlen < oldlen)
            hl_replaced_range(round_up((uintptr_t)old + newlen, KB4), b);
        if (tb > ta)
            hl_replaced_range(ta, tb);
    }
    hl_unlock();
    errno = saved;
    return p;
}

void *hl_mmap_fixed_slow(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    uintptr_t a = (uintptr_t)addr, b = round_up(a + len, KB4);
    if ((a & (KB4 - 1)) || b < a)
        return r_mmap(addr, len, prot, flags, fd, off);
    hl_lock();
    while (hl_busy_overlaps(a, b))
        hl_wait();
    if (flags & MAP_FIXED_NOREPLACE) { /* the program maps something there: EEXIST, as the kernel says */
        for (uintptr_t cur = a; cur < b;) {
            hl_region *r;
            uintptr_t s = hl_next_owned(cur, b, &r);
            if (s >= b)
                break;
            uintptr_t e = min_sz(b, hl_owned_run_end(r, s));
            for (uintptr_t x = s; x < e; x = r->base + hl_region_same_run_end(r, x - r->base, e - r->base))
                if (hl_region_mapped_at(r, x - r->base)) {
                    hl_unlock();
                    errno = EEXIST;
                    return MAP_FAILED;
                }
            cur = e;
        }
    }
    int e;
    while (!(e = hl_demote_range(a, b)) && hl_defer_pending()) { /* the holes demoted units had go first */
        hl_unlock();
        hl_lock_idle(a, b);
    }
    void *p = MAP_FAILED;
    if (!e)
        p = r_mmap(addr, len, prot, flags, fd, off);
    else
        errno = e;
    int saved = errno;
    if (p != MAP_FAILED)
        hl_replaced_range(a, b);
    hl_unlock();
    errno = saved;
    return p;
}
