/*
 * regions.c: the region table, with one owner per address.
 *
 * A region is a span [base, base + maplen) this library mapped.  Inside it:
 *   unmapped  offsets the program has munmap'ed (4 KB units);
 *   released  offsets given back to the kernel, whole release units (the
 *             huge page size; 4 KB for THP).  Released bytes belong to
 *             nobody: the kernel may put the next mapping there, and that
 *             mapping (maybe another region) owns them.
 * A region owns [0, maplen) minus released.  Invariants, kept by every
 * function here and checked by tests/native/test_regions.c:
 *   - no address is owned by two regions (hl_region_add refuses an overlap);
 *   - a release unit is released as soon as all of it is unmapped, and only
 *     when the real munmap succeeded (a failed one leaves it owned, logged);
 *   - a region whose every byte is unmapped is destroyed: what it still owns
 *     is given back and its slot is free.
 * munmap of a range splits it into owned pieces (bookkeeping) and unowned
 * pieces (the real munmap, its result returned to the program).
 *
 * This file calls no libc memory or I/O function: only hl_os_* (os.c, or the
 * fake in the unit test), hl_log/hl_warn_once and hl_record_gone.  All
 * functions expect the lock held.
 */
#include "hl.h"

#include <string.h>

hl_region hl_reg[HL_MAX_REGIONS];
int hl_reg_hwm;
atomic_int hl_nreg;
atomic_int hl_nalloc;
atomic_uintptr_t hl_lo = UINTPTR_MAX, hl_hi;

/* ---- interval sets --------------------------------------------------- */

static int ivs_reserve(hl_interval_set *s, size_t want)
{
    size_t cap = s->heap ? s->cap : IV_INLINE;
    if (want <= cap)
        return 0;
    size_t ncap = cap * 2;
    while (ncap < want)
        ncap *= 2;
    size_t bytes = round_up(ncap * sizeof(hl_iv), KB4);
    hl_iv *h = hl_os_pages(bytes);
    if (!h)
        return -1;
    memcpy(h, hl_ivs_data(s), s->n * sizeof(hl_iv));
    if (s->heap)
        hl_os_pages_free(s->heap, round_up(s->cap * sizeof(hl_iv), KB4));
    s->heap = h;
    s->cap = bytes / sizeof(hl_iv);
    return 0;
}

static void ivs_release(hl_interval_set *s)
{
    if (s->heap)
        hl_os_pages_free(s->heap, round_up(s->cap * sizeof(hl_iv), KB4));
    s->heap = NULL;
    s->n = s->cap = 0;
}

/* Adds [a, b), merging with touching intervals; -1 when out of memory (set unchanged). */
int hl_ivs_add(hl_interval_set *s, size_t a, size_t b)
{
    if (a >= b)
        return 0;
    if (ivs_reserve(s, s->n + 1) != 0)
        return -1;
    hl_iv *v = hl_ivs_data(s);
    size_t n = s->n, lo = 0;
    while (lo < n && v[lo].b < a)
        lo++;
    size_t hi = lo;
    while (hi < n && v[hi].a <= b)
        hi++;
    hl_iv j = {a, b};
    if (lo < hi) {
        j.a = min_sz(a, v[lo].a);
        j.b = max_sz(b, v[hi - 1].b);
        v[lo] = j;
        memmove(&v[lo + 1], &v[hi], (n - hi) * sizeof(hl_iv));
        s->n = n - (hi - lo - 1);
    } else {
        memmove(&v[lo + 1], &v[lo], (n - lo) * sizeof(hl_iv));
        v[lo] = j;
        s->n = n + 1;
    }
    return 0;
}

/* Whether [a, b) lies inside one interval of s. */
int hl_ivs_covers(const hl_interval_set *s, size_t a, size_t b)
{
    const hl_iv *v = hl_ivs_data(s);
    for (size_t i = 0; i < s->n; i++)
        if (v[i].a <= a && b <= v[i].b)
            return 1;
    return 0;
}

/* The interval of s containing x, or {x, x}. */
static hl_iv ivs_around(const hl_interval_set *s, size_t x)
{
    const hl_iv *v = hl_ivs_data(s);
    for (size_t i = 0; i < s->n; i++)
        if (v[i].a <= x && x < v[i].b)
            return v[i];
    return (hl_iv){x, x};
}

/* ---- ownership -------------------------------------------------------- */

static void bounds_recompute(void)
{
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < hl_reg_hwm; i++) {
        if (!hl_reg[i].in_use)
            continue;
        lo = min_sz(lo, hl_reg[i].base);
        hi = max_sz(hi, hl_reg[i].base + hl_reg[i].maplen);
    }
    atomic_store(&hl_lo, lo);
    atomic_store(&hl_hi, hi);
}

/* First owned address of r at or after x (absolute), or 0 when none. */
static uintptr_t first_owned(const hl_region *r, uintptr_t x)
{
    size_t off = x > r->base ? x - r->base : 0;
    const hl_iv *v = hl_ivs_data(&r->released);
    for (size_t i = 0; i < r->released.n; i++) {
        if (v[i].b <= off)
            continue;
        if (v[i].a > off)
            break;
        off = v[i].b;
    }
    return off < r->maplen ? r->base + off : 0;
}

uintptr_t hl_next_owned(uintptr_t x, uintptr_t end, hl_region **owner)
{
    uintptr_t best = end;
    *owner = NULL;
    for (int i = 0; i < hl_reg_hwm; i++) {
        hl_region *r = &hl_reg[i];
        if (!r->in_use || r->base >= best || r->base + r->maplen <= x)
            continue;
        uintptr_t o = first_owned(r, x);
        if (o && o < best) {
            best = o;
            *owner = r;
        }
    }
    return best;
}

hl_region *hl_region_owner(uintptr_t x)
{
    hl_region *r;
    return hl_next_owned(x, x + 1, &r) == x ? r : NULL;
}

/* End (absolute) of the owned run of r that contains x. */
uintptr_t hl_owned_run_end(const hl_region *r, uintptr_t x)
{
    size_t off = x - r->base;
    const hl_iv *v = hl_ivs_data(&r->released);
    for (size_t i = 0; i < r->released.n; i++)
        if (v[i].a > off)
            return r->base + v[i].a;
    return r->base + r->maplen;
}

hl_region *hl_alloc_region(uintptr_t p)
{
    for (int i = 0; i < hl_reg_hwm; i++) {
        hl_region *r = &hl_reg[i];
        if (r->in_use && r->origin == ORIGIN_ALLOC && r->base == p)
            return r;
    }
    return NULL;
}

/* ---- giving back ------------------------------------------------------ */

/* Gives [a, b) (offsets, whole units, owned) back to the kernel; 0 when it went. */
static int release(hl_region *r, size_t a, size_t b)
{
    if (a >= b)
        return 0;
    if (ivs_reserve(&r->released, r->released.n + 1) != 0) {
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s keeps its pages until exit", r->what);
        return -1;
    }
    if (hl_os_release(r->base + a, b - a, !!(r->flags & HL_RF_SHARED)) != 0) {
        hl_warn_once(R_RELEASE, "giving back pages of %s at %p failed (%s): kept", r->what, (void *)(r->base + a),
                     strerror(errno));
        return -1;
    }
    hl_ivs_add(&r->released, a, b); /* cannot fail: reserved above */
    return 0;
}

/* Releases what is still owned inside [a, b) (offsets, whole units). */
static void release_owned(hl_region *r, size_t a, size_t b)
{
    size_t cur = a;
    while (cur < b) {
        uintptr_t o = first_owned(r, r->base + cur);
        if (!o || o - r->base >= b)
            break;
        size_t s = o - r->base, e = min_sz(b, hl_owned_run_end(r, o) - r->base);
        release(r, s, e);
        cur = e;
    }
}

static void slot_free(hl_region *r)
{
    ivs_release(&r->unmapped);
    ivs_release(&r->released);
    hl_record_gone(r->rec);
    if (r->origin == ORIGIN_ALLOC)
        atomic_fetch_sub(&hl_nalloc, 1);
    r->in_use = 0;
    atomic_fetch_sub(&hl_nreg, 1);
    while (hl_reg_hwm > 0 && !hl_reg[hl_reg_hwm - 1].in_use)
        hl_reg_hwm--;
    bounds_recompute();
}

void hl_region_destroy(hl_region *r)
{
    release_owned(r, 0, r->maplen);
    hl_log(2, "%s: region at %p gone", r->what, (void *)r->base);
    slot_free(r);
}

void hl_region_forget(hl_region *r) { slot_free(r); }

void hl_region_unmap(hl_region *r, size_t a, size_t b)
{
    if (hl_ivs_add(&r->unmapped, a, b) != 0) {
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s keeps its pages until exit", r->what);
        return;
    }
    if (hl_ivs_covers(&r->unmapped, 0, r->maplen)) {
        hl_region_destroy(r);
        return;
    }
    hl_iv j = ivs_around(&r->unmapped, a);
    size_t ca = round_up(j.a, r->release_unit), cb = round_down(j.b, r->release_unit);
    if (ca < cb)
        release_owned(r, ca, cb);
}

int hl_region_shrink(hl_region *r, size_t newlen)
{
    size_t keep = round_up(newlen, r->release_unit);
    if (keep >= r->maplen || keep == 0)
        return -1;
    release_owned(r, keep, r->maplen);
    if (first_owned(r, r->base + keep))
        return -1; /* something stayed: keep the capacity honest */
    /* Forget the tail: it is the kernel's now. */
    hl_iv *v = hl_ivs_data(&r->released);
    size_t n = 0;
    for (size_t i = 0; i < r->released.n; i++)
        if (v[i].a < keep)
            v[n++] = (hl_iv){v[i].a, min_sz(v[i].b, keep)};
    r->released.n = n;
    v = hl_ivs_data(&r->unmapped);
    n = 0;
    for (size_t i = 0; i < r->unmapped.n; i++)
        if (v[i].a < keep)
            v[n++] = (hl_iv){v[i].a, min_sz(v[i].b, keep)};
    r->unmapped.n = n;
    r->maplen = keep;
    r->userlen = newlen;
    bounds_recompute();
    return 0;
}

hl_region *hl_region_add(uintptr_t p, size_t maplen, size_t userlen, size_t unit, int origin, int page,
                         const char *what, int rec)
{
    hl_region *other;
    if (maplen == 0 || p + maplen < p || hl_next_owned(p, p + maplen, &other) < p + maplen) {
        hl_warn_once(R_OVERLAP, "%s at %p overlaps %s, which this library still owns: not tracked", what,
                     (void *)p, other ? other->what : "?");
        return NULL;
    }
    int slot = -1;
    for (int i = 0; i < HL_MAX_REGIONS; i++)
        if (!hl_reg[i].in_use) {
            slot = i;
            break;
        }
    if (slot < 0) {
        hl_warn_once(R_TABLE, "more than %d regions: %s not placed on huge pages", HL_MAX_REGIONS, what);
        return NULL;
    }
    hl_region *r = &hl_reg[slot];
    memset(r, 0, sizeof *r);
    r->in_use = 1;
    r->origin = origin;
    r->page = page;
    r->rec = rec;
    r->base = p;
    r->maplen = maplen;
    r->userlen = userlen;
    r->release_unit = unit;
    size_t wl = strlen(what);
    if (wl >= sizeof r->what)
        wl = sizeof r->what - 1;
    memcpy(r->what, what, wl);
    r->what[wl] = 0;
    if (slot >= hl_reg_hwm)
        hl_reg_hwm = slot + 1;
    if (origin == ORIGIN_ALLOC)
        atomic_fetch_add(&hl_nalloc, 1);
    atomic_fetch_add(&hl_nreg, 1);
    if (p < atomic_load(&hl_lo))
        atomic_store(&hl_lo, p);
    if (p + maplen > atomic_load(&hl_hi))
        atomic_store(&hl_hi, p + maplen);
    /* The program never mapped the padding past its length: count it unmapped. */
    size_t pad = round_up(userlen, KB4);
    if (origin != ORIGIN_ALLOC && pad < maplen)
        hl_region_unmap(r, pad, maplen);
    return r;
}

int hl_regions_munmap(uintptr_t a, uintptr_t b)
{
    int err = 0;
    uintptr_t cur = a;
    while (cur < b) {
        hl_region *r;
        uintptr_t s = hl_next_owned(cur, b, &r);
        if (s > cur) {
            if (hl_os_unmap(cur, s - cur) != 0 && !err)
                err = errno;
            cur = s;
            continue;
        }
        uintptr_t e = min_sz(b, hl_owned_run_end(r, cur));
        hl_region_unmap(r, cur - r->base, e - r->base);
        cur = e;
    }
    return err;
}
