/*
 * fork.c: what a forked child gets of the managed regions, decided per unit
 * by one policy (fork_policy), applied by the child's fork handler.
 *
 * Without the library a child gets a private copy of every private mapping
 * (copy-on-write), nothing of MADV_DONTFORK ranges, zeros for
 * MADV_WIPEONFORK ones.  Huge pages break that in two ways:
 *   - a MAP_PRIVATE hugetlb page shared with a child needs a fresh huge page
 *     on the first write; when the pool has none, the kernel keeps the page
 *     for the parent (the reservation owner) and SIGBUSes the child;
 *   - 1 GB pages live in a memfd of ours mapped shared (hugemem.c: kernel
 *     6.18 loses a private 1 GB page's entry in about half the forked
 *     children), so a write would be seen by the other process.
 * The policy, per unit the child inherits:
 *   KEEP     THP and the program's own hugetlbfs maps: the kernel's fork
 *            already does what it would have done;
 *   LOST     MADV_DONTFORK: the kernel did not give it to the child, which
 *            forgets it (PROBE: an allocation's unit in ordinary memory, where
 *            the advice may have covered part of it: the child looks which
 *            pages it has);
 *   ZERO     MADV_WIPEONFORK (emulated on hugetlb): fresh zeroed memory;
 *   COPY     writable: demoted to ordinary memory with the same contents
 *            (demote.c), read while the forking parent thread waits (a pipe),
 *            so it cannot write first and take the page away;
 *   SHARE    read-only (or no access): left shared, marked HL_U_FORKED on
 *            both sides: never punched, and demoted before either side makes
 *            it writable (advice.c).
 * A child whose COPY failed (no memory) keeps sharing: a memfd unit is made
 * read-only there (a write would reach the parent), and the parent is told
 * (the pipe) to stop punching that region.  Other parent threads that write
 * to a unit while the child copies it are the one window left: such a write
 * can take a 2 MB page from a child (SIGBUS there) or show in its copy.
 * posix_spawn and vfork run no fork handlers and need none (the child execs);
 * a raw clone() that runs no handlers shares 1 GB allocations with its parent.
 */
#include "hl.h"

#include <sys/mman.h>

enum { KEEP, LOST, PROBE, ZERO, COPY, SHARE };

static int fork_policy(const hl_region *r, unsigned u)
{
    if ((u & HL_U_DONTFORK) && (u & HL_U_ORDINARY))
        return PROBE; /* ordinary memory: MADV_DONTFORK may have kept only some of its pages */
    if (u & HL_U_DONTFORK)
        return LOST;
    if (r->page == PAGE_THP || r->origin == ORIGIN_DIRECT || (u & HL_U_ORDINARY))
        return KEEP;
    if (u & HL_U_WIPEONFORK)
        return ZERO;
    return (u & PROT_WRITE) ? COPY : SHARE;
}

static int g_pipe[2] = {-1, -1};

/* Parent, before fork: no range busy (the child gets a quiet table); the lock is held until
 * the child has done its part (atfork_parent), so no parent thread frees what it copies. */
static void atfork_prepare(void)
{
    g_pipe[0] = g_pipe[1] = -1;
    if (atomic_load(&hl_nreg) > 0 && hl_os_pipe(g_pipe) != 0)
        g_pipe[0] = g_pipe[1] = -1;
    hl_index_fork_lock(); /* before the table's lock, the order hl_mmap_file takes them in */
    hl_lock();
    while (hl_busy_any())
        hl_wait();
    for (int i = 0; i < hl_reg_hwm; i++) {
        hl_region *r = &hl_reg[i];
        if (!r->in_use)
            continue;
        for (size_t off = 0; off < r->maplen; off += r->release_unit)
            if (fork_policy(r, hl_unit_get(r, off)) == SHARE)
                hl_unit_set(r, off, off + r->release_unit, 0, HL_U_FORKED);
    }
}

static void atfork_parent(void)
{
    if (g_pipe[0] >= 0) {
        hl_os_close(g_pipe[1]);
        char status = 0;
        hl_os_read(g_pipe[0], &status, 1);
        hl_os_close(g_pipe[0]);
        if (status) /* the child still shares units it should have copied: never punch them */
            for (int i = 0; i < hl_reg_hwm; i++)
                if (hl_reg[i].in_use && (hl_reg[i].flags & HL_RF_SHARED))
                    hl_unit_set(&hl_reg[i], 0, hl_reg[i].maplen, 0, HL_U_FORKED);
    }
    hl_unlock();
    hl_index_fork_unlock();
}

/* Applies the policy to every unit of r; 0, or -1 when a copy failed.  Consecutive units copied
 * together become one mapping, as the program's own would be. */
static int child_region(hl_region *r)
{
    int failed = 0, gen = r->gen;
    if (r->flags & HL_RF_SHARED) /* the parent's memfd pages: never punch them from here */
        hl_unit_set(r, 0, r->maplen, 0, HL_U_FORKED);
    for (size_t off = 0; off < r->maplen && r->in_use && r->gen == gen;) {
        hl_region *o;
        uintptr_t s = hl_next_owned(r->base + off, r->base + r->maplen, &o);
        if (o != r)
            break;
        off = s - r->base;
        unsigned u = hl_unit_get(r, off);
        int pol = fork_policy(r, u);
        size_t end = off + r->release_unit; /* the run of owned units with the same policy */
        while (end < r->maplen && hl_region_owner(r->base + end) == r && fork_policy(r, hl_unit_get(r, end)) == pol)
            end += r->release_unit;
        if (pol == LOST) { /* not in the child; an allocation keeps its identity until it is all gone */
            if (r->origin == ORIGIN_ALLOC)
                hl_region_unmap(r, off, end, NULL, 0);
            else
                hl_region_drop(r, off, end);
        } else if (pol == PROBE) {
            for (size_t x = off; x < end; x += KB4)
                if (hl_region_mapped_at(r, x) && !hl_os_mapped(r->base + x))
                    hl_region_unmap(r, x, x + KB4, NULL, 0);
        } else if (pol == ZERO || pol == COPY) {
            if (hl_demote_units(r, off, end, pol == ZERO) != 0) {
                failed = 1;
                for (size_t x = off; x < end && (r->flags & HL_RF_SHARED); x += r->release_unit)
                    hl_os_protect(r->base + x, r->release_unit, (int)(hl_unit_get(r, x) & HL_U_PROT & ~PROT_WRITE));
                hl_warn_once(R_FORK, "%s could not be copied for the child: %s there", r->what,
                             (r->flags & HL_RF_SHARED) ? "read-only" : "a write to it may fail");
            }
        } else if (pol == SHARE) {
            hl_unit_set(r, off, end, 0, HL_U_FORKED);
        }
        off = end;
    }
    return failed ? -1 : 0;
}

/* The child reports only what it creates itself; inherited regions stay managed. */
static void atfork_child(void)
{
    hl_lock_reinit_child();
    hl_mem_reinit_child();
    hl_index_reset_child();
    hl_lock();
    char status = 0;
    for (int i = 0; i < hl_reg_hwm; i++) {
        if (!hl_reg[i].in_use)
            continue;
        hl_reg[i].locked.n = 0; /* memory locks are not inherited by a child */
        if (child_region(&hl_reg[i]) != 0)
            status = 1;
    }
    for (int i = 0; i < hl_reg_hwm; i++)
        hl_reg[i].rec = -1;
    hl_records_forget();
    hl_unlock();
    if (g_pipe[0] >= 0) {
        hl_os_write_all(g_pipe[1], &status, 1);
        hl_os_close(g_pipe[0]);
        hl_os_close(g_pipe[1]); /* the parent's read returns: done */
    }
}

void hl_fork_install(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }
