/*
 * Unit test of the region table (csrc/preload/regions.c) against a fake OS
 * layer: no root, no huge pages, no real mappings (the addresses are plain
 * numbers; regions.c never touches the memory).  Built and run by
 * tests/test_regions.py:
 *   cc -I csrc/preload tests/native/test_regions.c csrc/preload/regions.c
 * The fake hl_os_unmap records every call and can be told to fail, so the
 * test sees exactly what would have been given back to the kernel.
 * Prints "ok <name>" per case, "FAIL ..." on a failed check; exit status is
 * the number of failures.
 */
#include "hl.h"

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
static int ncalls, fail_next_unmap, warnings;

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
int hl_os_release(uintptr_t addr, size_t len, int shared)
{
    int rc = hl_os_unmap(addr, len);
    if (rc == 0)
        calls[ncalls - 1].punched = shared;
    return rc;
}
void *hl_os_pages(size_t bytes) { return calloc(1, bytes); }
void hl_os_pages_free(void *p, size_t bytes) { free(p); }
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
    ncalls = fail_next_unmap = warnings = 0;
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
    hl_region *r = hl_region_add(BASE, 6 * MB, 6 * MB, MB2, ORIGIN_COPY, PAGE_2M, "a", -1);
    CHECK(r && live() == 1);
    /* 4 KB-aligned piece inside one page: recorded, nothing given back. */
    CHECK(hl_regions_munmap(BASE + 4096, BASE + MB) == 0);
    CHECK(ncalls == 0);
    /* Completing the first page gives it back, exactly it. */
    CHECK(hl_regions_munmap(BASE, BASE + 4096) == 0);
    CHECK(hl_regions_munmap(BASE + MB, BASE + 2 * MB) == 0);
    CHECK(ncalls == 1 && calls[0].a == BASE && calls[0].len == MB2);
    CHECK(hl_region_owner(BASE) == NULL && hl_region_owner(BASE + 2 * MB) == r);
    /* A piece unmapped twice while its page is still held: no call (the kernel returns 0 too). */
    CHECK(hl_regions_munmap(BASE + 2 * MB + 4096, BASE + 3 * MB) == 0);
    CHECK(hl_regions_munmap(BASE + 2 * MB + 4096, BASE + 3 * MB) == 0);
    CHECK(ncalls == 1);
    /* A given-back page is nobody's: munmap there reaches the kernel. */
    CHECK(hl_regions_munmap(BASE + 4096, BASE + MB) == 0);
    CHECK(ncalls == 2 && calls[1].a == BASE + 4096);
    printf("ok partial munmaps\n");
}

static void test_full_unmap_frees_region(void)
{
    reset();
    hl_region *r = hl_region_add(BASE, 6 * MB, 5 * MB + 123, MB2, ORIGIN_COPY, PAGE_2M, "a", -1);
    CHECK(r);
    /* The tail past the program's length was never the program's: already counted unmapped. */
    CHECK(hl_regions_munmap(BASE, BASE + 5 * MB + 4096) == 0);
    CHECK(live() == 0 && !r->in_use);
    CHECK(unmapped_total(BASE, BASE + 6 * MB) == 6); /* every page back */
    CHECK(atomic_load(&hl_lo) == UINTPTR_MAX && atomic_load(&hl_hi) == 0);
    printf("ok full unmap frees the region\n");
}

static void test_mapping_in_a_hole(void)
{
    reset();
    hl_region *a = hl_region_add(BASE, 6 * MB, 6 * MB, MB2, ORIGIN_COPY, PAGE_2M, "old", -1);
    CHECK(hl_regions_munmap(BASE + 2 * MB, BASE + 4 * MB) == 0); /* the middle page goes back */
    CHECK(ncalls == 1);
    /* The kernel puts the next mapping in that hole: accepted, owned by the new region. */
    hl_region *b = hl_region_add(BASE + 2 * MB, 2 * MB, 2 * MB, MB2, ORIGIN_STAGED, PAGE_2M, "new", -1);
    CHECK(b != NULL);
    CHECK(hl_region_owner(BASE + 2 * MB + 4096) == b && hl_region_owner(BASE) == a);
    /* Unmapping the new mapping goes to its owner, and frees it. */
    ncalls = 0;
    CHECK(hl_regions_munmap(BASE + 2 * MB, BASE + 4 * MB) == 0);
    CHECK(!b->in_use && a->in_use && live() == 1);
    CHECK(ncalls == 1 && calls[0].a == BASE + 2 * MB && calls[0].len == 2 * MB);
    /* Now the hole is nobody's: an unrelated munmap there reaches the kernel, not swallowed. */
    ncalls = 0;
    CHECK(hl_regions_munmap(BASE + 2 * MB, BASE + 3 * MB) == 0);
    CHECK(ncalls == 1 && calls[0].a == BASE + 2 * MB && calls[0].len == MB);
    /* One munmap spanning old, hole and old: the old region goes, the hole goes to the kernel. */
    ncalls = 0;
    CHECK(hl_regions_munmap(BASE, BASE + 6 * MB) == 0);
    CHECK(live() == 0);
    CHECK(unmapped_total(BASE, BASE + 6 * MB) == 6);
    printf("ok a mapping in a given-back hole\n");
}

static void test_overlap_rejected(void)
{
    reset();
    CHECK(hl_region_add(BASE, 4 * MB, 4 * MB, MB2, ORIGIN_ALLOC, PAGE_2M, "a", -1) != NULL);
    CHECK(hl_region_add(BASE + 2 * MB, 4 * MB, 4 * MB, MB2, ORIGIN_ALLOC, PAGE_2M, "b", -1) == NULL);
    CHECK(hl_region_add(BASE - 2 * MB, 4 * MB, 4 * MB, MB2, ORIGIN_ALLOC, PAGE_2M, "c", -1) == NULL);
    CHECK(warnings >= 2 && live() == 1);
    CHECK(hl_region_add(BASE + 4 * MB, 2 * MB, 2 * MB, MB2, ORIGIN_ALLOC, PAGE_2M, "d", -1) != NULL);
    CHECK(live() == 2);
    printf("ok overlap rejected on add\n");
}

static void test_failed_munmap_keeps_ownership(void)
{
    reset();
    hl_region *r = hl_region_add(BASE, 4 * MB, 4 * MB, MB2, ORIGIN_COPY, PAGE_2M, "a", -1);
    fail_next_unmap = 1;
    CHECK(hl_regions_munmap(BASE, BASE + 2 * MB) == 0);
    CHECK(ncalls == 0 && warnings == 1);
    CHECK(hl_region_owner(BASE) == r); /* not given back: still ours, nobody else's */
    /* Unowned piece whose real munmap fails: the error reaches the program. */
    fail_next_unmap = 1;
    CHECK(hl_regions_munmap(BASE + 8 * MB, BASE + 10 * MB) == EINVAL);
    /* The rest goes; destroying retries the page that stayed. */
    CHECK(hl_regions_munmap(BASE + 2 * MB, BASE + 4 * MB) == 0);
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 4 * MB) == 4);
    printf("ok the result of a real munmap is checked\n");
}

static void test_shrink(void)
{
    reset();
    hl_region *r = hl_region_add(BASE, 10 * MB, 10 * MB, MB2, ORIGIN_ALLOC, PAGE_2M, "m", -1);
    CHECK(hl_region_shrink(r, 3 * MB) == 0);
    CHECK(r->maplen == 4 * MB && r->userlen == 3 * MB);
    CHECK(ncalls == 1 && calls[0].a == BASE + 4 * MB && calls[0].len == 6 * MB);
    CHECK(hl_region_owner(BASE + 4 * MB) == NULL && atomic_load(&hl_hi) == BASE + 4 * MB);
    CHECK(hl_alloc_region(BASE) == r);
    hl_region_destroy(r);
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 4 * MB) == 4);
    printf("ok shrinking gives the tail back\n");
}

static void test_memfd_units_are_punched_before_unmap(void)
{
    reset();
    /* 1 GB pages live in a memfd: a unit given back must leave the file too; 2 MB ones need not. */
    hl_region *g = hl_region_add(BASE, 3 * GB1, 3 * GB1, GB1, ORIGIN_ALLOC, PAGE_1G, "g", -1);
    g->flags |= HL_RF_SHARED;
    CHECK(hl_region_shrink(g, GB1 + 4096) == 0);
    CHECK(ncalls == 1 && calls[0].a == BASE + 2 * GB1 && calls[0].len == GB1 && calls[0].punched == 1);
    g->flags &= ~HL_RF_SHARED; /* shared by fork: never punched again, only unmapped */
    hl_region_destroy(g);
    CHECK(ncalls == 2 && calls[1].len == 2 * GB1 && calls[1].punched == 0);
    hl_region *m = hl_region_add(BASE, 4 * MB, 4 * MB, MB2, ORIGIN_ALLOC, PAGE_2M, "m", -1);
    hl_region_destroy(m);
    CHECK(ncalls == 3 && calls[2].punched == 0 && live() == 0);
    printf("ok memfd units are punched before unmap, others only unmapped\n");
}

static void test_many_fragments(void)
{
    reset();
    /* More fragments than the inline interval storage holds. */
    hl_region *r = hl_region_add(BASE, 64 * MB, 64 * MB, MB2, ORIGIN_COPY, PAGE_2M, "f", -1);
    for (int i = 0; i < 32; i++)
        CHECK(hl_regions_munmap(BASE + (size_t)i * 2 * MB, BASE + (size_t)i * 2 * MB + MB) == 0);
    CHECK(r->unmapped.n == 32 && ncalls == 0);
    for (int i = 0; i < 32; i++)
        CHECK(hl_regions_munmap(BASE + (size_t)i * 2 * MB + MB, BASE + (size_t)i * 2 * MB + 2 * MB) == 0);
    CHECK(live() == 0 && unmapped_total(BASE, BASE + 64 * MB) == 64);
    printf("ok many fragments\n");
}

int main(void)
{
    test_partial_munmaps();
    test_full_unmap_frees_region();
    test_mapping_in_a_hole();
    test_overlap_rejected();
    test_failed_munmap_keeps_ownership();
    test_shrink();
    test_memfd_units_are_punched_before_unmap();
    test_many_fragments();
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures;
}
