/*
 * Unit test of the region table (csrc/preload/regions.c) against a fake OS
 * layer: no root, no huge pages, no real mappings (the addresses are plain
 * numbers; regions.c never touches the memory).  Built and run by
 * tests/test_regions.py:
 *   cc -I csrc/preload tests/native/test_regions.c csrc/preload/regions.c
 * The fake hl_os_release records every call and can be told to fail, so the
 * test sees exactly what would have been given back to the kernel.  Releases
 * are queued under the lock and done after it (release() below plays
 * hl_unlock_release: run the queue, then hl_release_done).
 * Prints "ok <name>" per case, "FAIL ..." on a failed check; exit status is
 * the number of failures.
 */
#include "hl.h"

#include <sys/mman.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the fake OS layer ---- */
typedef struct {
    uintptr_t a;
    size_t len;
    int punched; /* released with the memfd punch (HL_RF_SHARED) */
} call;
static call calls[256];
static int ncalls, fail_next_unmap, warnings, deferred;

int hl_os_unmap(uintptr_t addr, size_t len)
{
    if (fail_next_unmap) {
        fail_next_unmap--;
        errno = EINVAL;
        return -1;
    }
    calls[ncalls++] = (call){addr, len, 0};
    return 0;
}
int hl_os_release(uintptr_t addr, size_t len, int punch)
{
    int rc = hl_os_unmap(addr, len);
    if (rc == 0)
        calls[ncalls - 1].punched = punch;
    return rc;
}
void *hl_mem_alloc(size_t bytes) { return calloc(1, bytes); }
void hl_mem_free(void *p, size_t bytes) { free(p); }
void hl_log(int level, const char *fmt, ...) {}
void hl_warn_once(int reason, const char *fmt, ...)
{
    warnings++;
    va_list ap;
    va_start(ap, fmt);
    printf("  log: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}
void hl_record_gone(int rec) {}
void hl_lock(void) {}
void hl_wait(void) {}
void hl_wake(void) {}
void hl_defer_unmap(uintptr_t a, size_t len) { deferred++; }

/* What hl_unlock_release does after the lock: the real calls, then the bookkeeping. */
static hl_release_list rl;
static int release(void)
{
    int err = 0;
    for (int i = 0; i < rl.nk; i++)
        if (hl_os_unmap(rl.kernel_a[i], rl.kernel_len[i]) != 0 && !err)
            err = errno;
    rl.nk = 0;
    for (int i = 0; i < rl.n; i++)
        rl.v[i].ok = hl_os_release(rl.v[i].a, rl.v[i].len, rl.v[i].punch) == 0;
    hl_release_done(&rl);
    return err;
}
static int munmap_range(uintptr_t a, uintptr_t b)
{
    hl_regions_munmap(a, b, &rl);
    return release();
}
static hl_region *add(uintptr_t p, size_t maplen, size_t userlen, int origin, const char *what)
{
    return hl_region_add(p, maplen, userlen, MB2, origin, PAGE_2M, what, -1, 3, 0);
}

/* ---- checks ---- */
static int failures;
#define CHECK(c)                                                            \
    do {                                                                    \
        if (!(c)) {                                                         \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);             \
            failures++;                                                     \
        }                                                                   \
    } while (0)

#define BASE ((uintptr_t)0x7f0000000000)
#define MB ((size_t)1 << 20)

static void reset(void)
{
    for (int i = 0; i < hl_reg_hwm; i++)
        if (hl_reg[i].in_use)
            hl_region_forget(&hl_reg[i]);
    ncalls = fail_next_unmap = warnings = deferred = 0;
    rl.n = rl.nk = rl.kernel_err = 0;
}

static int unmapped_total(uintptr_t a, uintptr_t b)
{
    size_t t = 0;
    for (int i = 0; i < ncalls; i++)
        if (calls[i].a >= a && calls[i].a + calls[i].len <= b)
            t += calls[i].len;
    return (int)(t / MB);
}

static int live(void) { return atomic_load(&hl_nreg); }

static void test_partial_munmaps(void)
{
    reset();
    hl_region *r = add(BASE, 6 * MB, 6 * MB, ORIGIN_COPY, "a");
    CHECK(r && live() == 1);
    /* 4 KB-aligned piece inside one page: recorded, nothing given back. */
    CHECK(munmap_range(BASE + 4096, BASE + MB) == 0);
    CHECK(ncalls == 0);
    /* Completing the first page gives it back, exactly it. */
    CHECK(munmap_range(BASE, BASE + 4096) == 0);
    CHECK(munmap_range(BASE + MB, BASE + 2 * MB) == 0);
    CHECK(ncalls == 1 && calls[0].a == BASE && calls[0].len == MB2);
    CHECK(hl_region_owner(BASE) == NULL && hl_region_owner(BASE + 2 * MB) == r);
    /* A piece unmapped twice while its page is still held: no call (the kernel returns 0 too). */
    CHECK(munmap_range(BASE + 2 * MB + 4096, BASE + 3 * MB) == 0);
    CHECK(munmap_range(BASE + 2 * MB + 4096, BASE + 3 * MB) == 0);
    CHECK(ncalls == 1);
    /* A given-back page is nobody's: munmap there reaches the kernel. */
    CHECK(munmap_range(BASE + 4096, BASE + MB) == 0);
    CHECK(ncalls == 2 && calls[1].a == BASE + 4096);
    printf("ok partial munmaps\n");
}

static void test_full_unmap_frees_region(void)
{
    reset();
    hl_region *r = add(BASE, 6 * MB, 5 * MB + 123, ORIGIN_COPY, "a");
    CHECK(r);
    /* The tail past the program's length was never the program's: already counted unmapped. */
    CHECK(munmap_range(BASE, BASE + 5 * MB + 4096) == 0);
    CHECK(live() == 0 && !r->in_use);
    CHECK(unmapped_total(BASE, BASE + 6 * MB) == 6); /* every page back */
    CHECK(atomic_load(&hl_lo) == UINTPTR_MAX && atomic_load(&hl_hi) == 0);
    printf("ok full unmap frees the region\n");
}

static void test_mapping_in_a_hole(void)
{
    reset();
    hl_region *a = add(BASE, 6 * MB, 6 * MB, ORIGIN_COPY, "old");
    CHECK(munmap_range(BASE + 2 * MB, BASE + 4 * MB) == 0); /* the middle page goes back */
    CHECK(ncalls == 1);
    /* The kernel puts the next mapping in that hole: accepted, owned by the new region. */
    hl_region *b = add(BASE + 2 * MB, 2 * MB, 2 * MB, ORIGIN_STAGED, "new");
    CHECK(b != NULL);
    CHECK(hl_region_owner(BASE + 2 * MB + 4096) == b && hl_region_owner(BASE) == a);
    /* Unmapping the new mapping goes to its owner, and frees it. */
    ncalls = 0;
    CHECK(munmap_range(BASE + 2 * MB, BASE + 4 * MB) == 0);
    CHECK(!b->in_use && a->in_use && live() == 1);
    CHECK(ncalls == 1 && calls[0].a == BASE + 2 * MB && calls[0].len == 2 * MB);
    /* Now the hole is nobody's: an unrelated munmap there reaches the kernel, not swallowed. */
    ncalls = 0;
    CHECK(munmap_range(BASE + 2 * MB, BASE + 3 * MB) == 0);
    CHECK(ncalls == 1 && calls[0].a == BASE + 2 * MB && calls[0].len == MB);
    /* One munmap spanning old, hole and old: the old region goes, the hole goes to the kernel. */
    ncalls = 0;
    CHECK(munmap_range(BASE, BASE + 6 * MB) == 0);
    CHECK(live() == 0);
    CHECK(unmapped_total(BASE, BASE + 6 * MB) == 6);
    printf("ok a mapping in a given-back hole\n");
}

static void test_overlap_rejected(void)
{
    reset();
    CHECK(add(BASE, 4 * MB, 4 * MB, ORIGIN_ALLOC, "a") != NULL);
    CHECK(add(BASE + 2 * MB, 4 * MB, 4 * MB, ORIGIN_ALLOC, "b") == NULL);
    CHECK(add(BASE - 2 * MB, 4 * MB, 4 * MB, ORIGIN_ALLOC, "c") == NULL);
    CHECK(warnings >= 2 && live() == 1);
    CHECK(add(BASE + 4 * MB, 2 * MB, 2 * MB, ORIGIN_ALLOC, "d") != NULL);
    CHECK(live() == 2);
    printf("ok overlap rejected on add\n");
}

static void test_failed_munmap_keeps_ownership(void)
{
    reset();
    hl_region *r = add(BASE, 4 * MB, 4 * MB, ORIGIN_COPY, "a");
    fail_next_unmap = 1;
    CHECK(munmap_range(BASE, BASE + 2 * MB) == 0);
    CHECK(ncalls == 0 && warnings == 1);
    CHECK(hl_region_owner(BASE) == r); /* not given back: still ours, nobody else's */
    /* Unowned piece whose real munmap fails: the error reaches the program. */
    fail_next_unmap = 1;
    CHECK(munmap_range(BASE + 8 * MB, BASE + 10 * MB) == EINVAL);
    /* The rest goes; destroying retries the page that stayed. */
    CHECK(munmap_range(BASE + 2 * MB, BASE + 4 * MB) == 0);
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 4 * MB) == 4);
    printf("ok the result of a real munmap is checked\n");
}

static void test_shrink(void)
{
    reset();
    hl_region *r = add(BASE, 10 * MB, 10 * MB, ORIGIN_ALLOC, "m");
    CHECK(hl_region_shrink(r, 3 * MB, &rl) == 0 && release() == 0);
    CHECK(hl_region_capacity(r) == 4 * MB && r->userlen == 3 * MB);
    CHECK(ncalls == 1 && calls[0].a == BASE + 4 * MB && calls[0].len == 6 * MB);
    CHECK(hl_region_owner(BASE + 4 * MB) == NULL);
    CHECK(hl_alloc_region(BASE) == r);
    hl_region_destroy(r, &rl);
    release();
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 4 * MB) == 4);
    printf("ok shrinking gives the tail back\n");
}

static void test_failed_shrink_keeps_capacity_honest(void)
{
    reset();
    /* Issue 20, item 13: a shrink whose release fails must not leave the capacity (how far
     * realloc grows in place, malloc_usable_size) past pages that are gone or not the program's. */
    hl_region *r = add(BASE, 10 * MB, 10 * MB, ORIGIN_ALLOC, "m");
    fail_next_unmap = 1;
    CHECK(hl_region_shrink(r, 3 * MB, &rl) == 0 && release() == 0);
    CHECK(hl_region_capacity(r) == 4 * MB);
    CHECK(hl_region_owner(BASE + 4 * MB) == r); /* kept, and retried when the region goes */
    hl_region_destroy(r, &rl);
    release();
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 10 * MB) == 10);
    printf("ok a failed shrink keeps the capacity honest\n");
}

static void test_release_happens_after_the_lock(void)
{
    reset();
    /* Queued releases stay owned and busy until they are done: nobody else can take the range. */
    hl_region *r = add(BASE, 4 * MB, 4 * MB, ORIGIN_ALLOC, "m");
    hl_region_destroy(r, &rl);
    CHECK(rl.n == 1 && ncalls == 0);
    CHECK(hl_region_owner(BASE) == r && hl_busy_overlaps(BASE, BASE + 1));
    CHECK(release() == 0);
    CHECK(!hl_busy_any() && live() == 0 && ncalls == 1);
    printf("ok releases run after the lock, their range owned and busy until then\n");
}

static void test_unit_state(void)
{
    reset();
    hl_region *h = add(BASE, 8 * MB, 8 * MB, ORIGIN_ALLOC, "h");
    CHECK(h->units && h->nunits == 4 && hl_unit_get(h, 0) == 3);
    CHECK(hl_unit_set(h, 2 * MB, 6 * MB, HL_U_PROT, PROT_READ | HL_U_DONTFORK) == 0);
    CHECK(hl_unit_get(h, 0) == 3 && hl_unit_get(h, 2 * MB) == (PROT_READ | HL_U_DONTFORK));
    CHECK(hl_unit_get(h, 5 * MB) == (PROT_READ | HL_U_DONTFORK) && hl_unit_get(h, 6 * MB) == 3);
    /* mlock is kept to the 4 KB page, in an interval set */
    CHECK(hl_ivs_add(&h->locked, 4096, 3 * MB) == 0 && hl_ivs_sub(&h->locked, MB, MB + 8192) == 0);
    CHECK(h->locked.n == 2 && hl_ivs_overlaps(&h->locked, 0, 4097) && !hl_ivs_overlaps(&h->locked, MB, MB + 8192));
    CHECK(hl_ivs_boundary(&h->locked, 0, 8 * MB) == 4096 && hl_ivs_boundary(&h->locked, MB, 8 * MB) == MB + 8192);
    CHECK(hl_ivs_sub(&h->locked, 0, 8 * MB) == 0 && h->locked.n == 0);
    /* THP regions (4 KB units) get the array only once something differs. */
    hl_region *t = hl_region_add(BASE + 64 * MB, 4 * MB, 4 * MB, KB4, ORIGIN_ALLOC, PAGE_THP, "t", -1, 3, 0);
    CHECK(t && !t->units && hl_unit_get(t, 4096) == 3);
    CHECK(hl_unit_set(t, 4096, 8192, 0, HL_U_DONTFORK) == 0 && t->nunits == 1024);
    CHECK(hl_unit_get(t, 4096) == (3 | HL_U_DONTFORK) && hl_unit_get(t, 0) == 3);
    printf("ok per-unit state\n");
}

static void test_demoted_units_are_nobodys(void)
{
    reset();
    /* A unit handed to ordinary memory (demote.c) is no longer the region's, and was not unmapped. */
    hl_region *r = add(BASE, 6 * MB, 6 * MB, ORIGIN_COPY, "c");
    hl_region_drop(r, 2 * MB, 4 * MB);
    CHECK(ncalls == 0 && hl_region_owner(BASE + 2 * MB) == NULL && hl_region_owner(BASE) == r);
    CHECK(munmap_range(BASE, BASE + 6 * MB) == 0);
    CHECK(live() == 0 && ncalls == 3); /* two units given back, the middle piece to the kernel */
    printf("ok demoted units are nobody's\n");
}

static void test_memfd_units_are_punched_before_unmap(void)
{
    reset();
    /* 1 GB pages live in a memfd: a unit given back must leave the file too; 2 MB ones need not. */
    hl_region *g = hl_region_add(BASE, 3 * GB1, 3 * GB1, GB1, ORIGIN_ALLOC, PAGE_1G, "g", -1, 3, HL_RF_SHARED);
    CHECK(hl_region_shrink(g, GB1 + 4096, &rl) == 0 && release() == 0);
    CHECK(ncalls == 1 && calls[0].a == BASE + 2 * GB1 && calls[0].len == GB1 && calls[0].punched == 1);
    hl_unit_set(g, 0, GB1, 0, HL_U_FORKED); /* a child shares it: never punched, only unmapped */
    hl_region_destroy(g, &rl);
    release();
    CHECK(ncalls == 3 && calls[1].len == GB1 && calls[1].punched == 0 && calls[2].punched == 1);
    hl_region *m = add(BASE, 4 * MB, 4 * MB, ORIGIN_ALLOC, "m");
    hl_region_destroy(m, &rl);
    release();
    CHECK(ncalls == 4 && calls[3].punched == 0 && live() == 0);
    printf("ok memfd units are punched before unmap, shared or others only unmapped\n");
}

static void test_many_fragments(void)
{
    reset();
    /* More fragments than the inline interval storage holds. */
    hl_region *r = add(BASE, 64 * MB, 64 * MB, ORIGIN_COPY, "f");
    for (int i = 0; i < 32; i++)
        CHECK(munmap_range(BASE + (size_t)i * 2 * MB, BASE + (size_t)i * 2 * MB + MB) == 0);
    CHECK(r->unmapped.n == 32 && ncalls == 0);
    for (int i = 0; i < 32; i++)
        CHECK(munmap_range(BASE + (size_t)i * 2 * MB + MB, BASE + (size_t)i * 2 * MB + 2 * MB) == 0);
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 64 * MB) == 64);
    printf("ok many fragments\n");
}

/* A staged copy in mixed page sizes (filemap.c add_parts): its 1 GB part and its 2 MB part are
 * two regions side by side, each with its own unit and its own piece of the shadow. */
static void test_two_part_copy(void)
{
    reset();
    size_t tail = 6 * MB + 12345, tail_map = 8 * MB;
    uintptr_t mid = BASE + GB1, shadow = BASE + 64 * GB1;
    hl_region *a = hl_region_add(BASE, GB1, GB1, GB1, ORIGIN_STAGED, PAGE_1G, "m", -1, PROT_READ, 0);
    hl_region *b = hl_region_add(mid, tail_map, tail, MB2, ORIGIN_STAGED, PAGE_2M, "m", -1, PROT_READ, 0);
    CHECK(a && b && live() == 2);
    a->shadow = shadow, a->shadow_len = GB1, a->shadow_file = GB1;
    b->shadow = shadow + GB1, b->shadow_len = tail_map, b->shadow_file = round_up(tail, KB4);
    CHECK(hl_region_owner(mid - KB4) == a && hl_region_owner(mid) == b);
    CHECK(atomic_load(&hl_lo) == BASE && atomic_load(&hl_hi) == mid + tail_map);
    /* llama.cpp's 4 KB munmaps: the first page alone gives back nothing of either part. */
    CHECK(munmap_range(BASE, BASE + KB4) == 0 && ncalls == 0);
    /* One munmap across the boundary: the whole 1 GB page, and the first 2 MB unit after it, each
     * given back by its own region in its own unit; the 1 GB region is gone. */
    CHECK(munmap_range(BASE + KB4, mid + 2 * MB + KB4) == 0);
    CHECK(ncalls == 2 && calls[0].a == BASE && calls[0].len == GB1 && calls[1].a == mid && calls[1].len == MB2);
    CHECK(!a->in_use && b->in_use && live() == 1 && deferred == 1); /* its piece of the shadow only */
    CHECK(hl_region_owner(BASE) == NULL && hl_region_owner(mid + 2 * MB + KB4) == b);
    CHECK(atomic_load(&hl_lo) == mid);
    /* The rest, up to the program's unaligned length: every page back, the shadow's second piece too. */
    ncalls = 0;
    CHECK(munmap_range(mid + 2 * MB, mid + round_up(tail, KB4)) == 0);
    CHECK(live() == 0 && deferred == 2 && unmapped_total(mid, mid + tail_map) == 6);
    printf("ok two-part copy\n");
}

/* An allocation the 1 GB pool could not hold whole (hugemem.c try_parts): its 1 GB part, then
 * its 2 MB part flagged HL_RF_TAIL; free, realloc and malloc_usable_size see one block. */
static hl_region *two_part_alloc(size_t tail_map, size_t n)
{
    hl_region *h = hl_region_add(BASE, GB1, n, GB1, ORIGIN_ALLOC, PAGE_1G, "a", -1, 3, HL_RF_SHARED);
    hl_region *t = hl_region_add(BASE + GB1, tail_map, n - GB1, MB2, ORIGIN_ALLOC, PAGE_2M, "a", -1, 3, HL_RF_TAIL);
    return h && t ? h : NULL;
}

static void test_allocation_in_two_parts(void)
{
    reset();
    hl_region *h = two_part_alloc(8 * MB, GB1 + 7 * MB);
    CHECK(h && hl_alloc_region(BASE) == h && hl_alloc_region(BASE + GB1) == NULL); /* only the block's start */
    CHECK(hl_alloc_tail(h) && hl_alloc_tail(h)->base == BASE + GB1);
    CHECK(hl_alloc_capacity(h) == GB1 + 8 * MB);
    /* A shrink that keeps some of the second part gives back only its pages past the new size. */
    hl_alloc_shrink(h, GB1 + 3 * MB, &rl);
    CHECK(release() == 0 && ncalls == 1 && calls[0].a == BASE + GB1 + 4 * MB && calls[0].len == 4 * MB);
    CHECK(h->userlen == GB1 + 3 * MB && hl_alloc_capacity(h) == GB1 + 4 * MB);
    /* One into the first part gives the whole second part back, and then the 1 GB page past it. */
    hl_alloc_shrink(h, 100 * MB, &rl);
    CHECK(release() == 0 && ncalls == 2 && calls[1].a == BASE + GB1 && calls[1].len == 4 * MB);
    CHECK(hl_alloc_tail(h) == NULL && live() == 1 && hl_alloc_capacity(h) == GB1 && h->userlen == 100 * MB);
    hl_alloc_destroy(h, &rl);
    release();
    CHECK(ncalls == 3 && calls[2].a == BASE && calls[2].len == GB1 && calls[2].punched == 1 && live() == 0);
    /* Free gives both parts back, each in its own unit; a tail never answers for a block alone. */
    reset();
    h = two_part_alloc(4 * MB, GB1 + 3 * MB);
    hl_alloc_destroy(h, &rl);
    release();
    CHECK(ncalls == 2 && live() == 0 && unmapped_total(BASE, BASE + GB1 + 4 * MB) == 1024 + 4);
    CHECK(calls[0].punched == 1 && calls[1].punched == 0);
    /* A second part whose first part was given back by munmap is nobody's block to free. */
    reset();
    h = two_part_alloc(4 * MB, GB1 + 3 * MB);
    CHECK(munmap_range(BASE, BASE + GB1) == 0 && live() == 1 && hl_alloc_region(BASE + GB1) == NULL);
    CHECK(munmap_range(BASE + GB1, BASE + GB1 + 4 * MB) == 0 && live() == 0);
    printf("ok an allocation in two parts is one block\n");
}

int main(void)
{
    test_partial_munmaps();
    test_full_unmap_frees_region();
    test_mapping_in_a_hole();
    test_overlap_rejected();
    test_failed_munmap_keeps_ownership();
    test_shrink();
    test_failed_shrink_keeps_capacity_honest();
    test_release_happens_after_the_lock();
    test_unit_state();
    test_demoted_units_are_nobodys();
    test_memfd_units_are_punched_before_unmap();
    test_many_fragments();
    test_two_part_copy();
    test_allocation_in_two_parts();
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures;
}
