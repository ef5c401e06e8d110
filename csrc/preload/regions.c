/*
 * regions.c: the region table, with one owner per address.
 *
 * A region is a span [base, base + maplen) this library mapped.  Inside it:
 *   unmapped  offsets the program has munmap'ed (4 KB units);
 *   released  offsets given back to the kernel (or handed to ordinary memory
 *             by demote.c): whole release units (the huge page size; 4 KB
 *             for THP).  Released bytes belong to nobody: the kernel may put
 *             the next mapping there, and that mapping (maybe another region)
 *             owns them.
 *   units     one byte of state per release unit (hl.h HL_U_*): the
 *             protection the program set, fork advice, mlock, shared with a
 *             child.  THP regions get the array only once something differs
 *             from prot0.
 * A region owns [0, maplen) minus released.  Invariants, kept by every
 * function here and checked by tests/native/test_regions.c:
 *   - no address is owned by two regions (hl_region_add refuses an overlap);
 *   - a release unit is queued for release as soon as all of it is
 *     unmapped, and becomes released only when the real munmap succeeded (a
 *     failed one leaves it owned, logged, retried when the region goes);
 *   - while queued it stays owned and its range is busy: nobody else can
 *     map there, and a thread that needs the range waits;
 *   - a region whose every byte is unmapped is dying: what it still owns is
 *     queued, and its slot is freed when nothing is owned any more.
 * The releases themselves (munmap, the memfd punch) run after the lock is
 * released (advice.c hl_release_run), then hl_release_done() records them.
 * munmap of a range splits it into owned pieces (bookkeeping) and unowned
 * pieces (queued as real munmaps, their result returned to the program).
 *
 * This file calls no libc memory or I/O function: only hl_mem_* and
 * hl_os_release (os.c, or the fake in the unit test), hl_log/hl_warn_once,
 * hl_record_gone and the lock.  All functions expect the lock held.
 */
#include "hl.h"

#include <string.h>

hl_region hl_reg[HL_MAX_REGIONS];
int hl_reg_hwm;
atomic_int hl_nreg;
atomic_int hl_nalloc;
atomic_uintptr_t hl_lo = UINTPTR_MAX, hl_hi;
static int g_gen;

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
    hl_iv *h = hl_mem_alloc(bytes);
    if (!h)
        return -1;
    memcpy(h, hl_ivs_data(s), s->n * sizeof(hl_iv));
    if (s->heap)
        hl_mem_free(s->heap, round_up(s->cap * sizeof(hl_iv), KB4));
    s->heap = h;
    s->cap = bytes / sizeof(hl_iv);
    return 0;
}

static void ivs_release(hl_interval_set *s)
{
    if (s->heap)
        hl_mem_free(s->heap, round_up(s->cap * sizeof(hl_iv), KB4));
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

/* Removes [a, b); -1 when out of memory (set unchanged). */
int hl_ivs_sub(hl_interval_set *s, size_t a, size_t b)
{
    if (a >= b)
        return 0;
    hl_iv *v = hl_ivs_data(s);
    for (size_t i = 0; i < s->n; i++)
        if (v[i].a < a && v[i].b > b) { /* one interval becomes two */
            if (ivs_reserve(s, s->n + 1) != 0)
                return -1;
            v = hl_ivs_data(s);
            memmove(&v[i + 2], &v[i + 1], (s->n - i - 1) * sizeof(hl_iv));
            v[i + 1] = (hl_iv){b, v[i].b};
            v[i].b = a;
            s->n++;
            return 0;
        }
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) {
        hl_iv x = v[i];
        if (x.b <= a || x.a >= b)
            v[n++] = x;
        else if (x.a < a)
            v[n++] = (hl_iv){x.a, a};
        else if (x.b > b)
            v[n++] = (hl_iv){b, x.b};
    }
    s->n = n;
    return 0;
}

int hl_ivs_overlaps(const hl_interval_set *s, size_t a, size_t b)
{
    const hl_iv *v = hl_ivs_data(s);
    for (size_t i = 0; i < s->n; i++)
        if (v[i].a < b && a < v[i].b)
            return 1;
    return 0;
}

size_t hl_ivs_boundary(const hl_interval_set *s, size_t x, size_t limit)
{
    const hl_iv *v = hl_ivs_data(s);
    for (size_t i = 0; i < s->n; i++) {
        if (v[i].a > x)
            return min_sz(v[i].a, limit);
        if (v[i].b > x)
            return min_sz(v[i].b, limit);
    }
    return limit;
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

/* First offset >= x inside s (or x itself), and the end of the run x starts. */
static size_t ivs_run_end(const hl_interval_set *s, size_t x, size_t limit, int inside)
{
    const hl_iv *v = hl_ivs_data(s);
    for (size_t i = 0; i < s->n; i++) {
        if (v[i].b <= x)
            continue;
        if (v[i].a <= x)
            return inside ? min_sz(v[i].b, limit) : x;
        return inside ? x : min_sz(v[i].a, limit);
    }
    return inside ? x : limit;
}

/* ---- busy ranges --------------------------------------------------------- */

#define BUSY_MAX 32
static hl_iv g_busy[BUSY_MAX];
static int g_nbusy;

int hl_busy_overlaps(uintptr_t a, uintptr_t b)
{
    for (int i = 0; i < g_nbusy; i++)
        if (g_busy[i].a < b && a < g_busy[i].b)
            return 1;
    return 0;
}

int hl_busy_add(uintptr_t a, uintptr_t b)
{
    if (g_nbusy >= BUSY_MAX)
        return -1;
    g_busy[g_nbusy++] = (hl_iv){a, b};
    return 0;
}

void hl_busy_del(uintptr_t a, uintptr_t b)
{
    for (int i = 0; i < g_nbusy; i++)
        if (g_busy[i].a == a && g_busy[i].b == b) {
            g_busy[i] = g_busy[--g_nbusy];
            return;
        }
}

int hl_busy_any(void) { return g_nbusy > 0; }

void hl_lock_idle(uintptr_t a, uintptr_t b)
{
    hl_lock();
    while (hl_busy_overlaps(a, b))
        hl_wait();
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

int hl_region_mapped_at(const hl_region *r, size_t off)
{
    return off < r->maplen && !hl_ivs_covers(&r->unmapped, off, off + 1) && !hl_ivs_covers(&r->released, off, off + 1);
}

size_t hl_region_same_run_end(const hl_region *r, size_t off, size_t limit)
{
    int mapped = !hl_ivs_covers(&r->unmapped, off, off + 1);
    return ivs_run_end(&r->unmapped, off, limit, !mapped);
}

size_t hl_region_capacity(const hl_region *r)
{
    size_t a = ivs_run_end(&r->unmapped, 0, r->maplen, 0);
    size_t b = ivs_run_end(&r->released, 0, r->maplen, 0);
    return min_sz(a, b);
}

hl_region *hl_alloc_region(uintptr_t p)
{
    for (int i = 0; i < hl_reg_hwm; i++) {
        hl_region *r = &hl_reg[i];
        if (r->in_use && r->origin == ORIGIN_ALLOC && r->base == p && !(r->flags & (HL_RF_DYING | HL_RF_TAIL)))
            return r;
    }
    return NULL;
}

hl_region *hl_alloc_tail(const hl_region *head)
{
    uintptr_t end = head->base + head->maplen;
    for (int i = 0; i < hl_reg_hwm; i++) {
        hl_region *r = &hl_reg[i];
        if (r->in_use && r->origin == ORIGIN_ALLOC && (r->flags & HL_RF_TAIL) && r->base == end &&
            !(r->flags & HL_RF_DYING))
            return r;
    }
    return NULL;
}

size_t hl_alloc_capacity(const hl_region *head)
{
    size_t cap = hl_region_capacity(head);
    hl_region *t = cap == head->maplen ? hl_alloc_tail(head) : NULL;
    return t ? cap + hl_region_capacity(t) : cap;
}

void hl_alloc_destroy(hl_region *head, hl_release_list *rl)
{
    hl_region *t = hl_alloc_tail(head);
    hl_region_destroy(head, rl);
    if (t)
        hl_region_destroy(t, rl);
}

/* A shrink into the first part gives the whole second part back; one that keeps some of the
 * second part gives back only its pages past the new size. */
void hl_alloc_shrink(hl_region *head, size_t newlen, hl_release_list *rl)
{
    hl_region *t = hl_alloc_tail(head);
    if (t && newlen > head->maplen)
        hl_region_shrink(t, newlen - head->maplen, rl);
    else {
        if (t)
            hl_region_destroy(t, rl);
        hl_region_shrink(head, newlen, rl);
    }
    head->userlen = newlen;
}

/* ---- per-unit state ---------------------------------------------------- */

unsigned hl_unit_get(const hl_region *r, size_t off)
{
    if (!r->units)
        return r->prot0;
    size_t i = off / r->release_unit;
    return i < r->nunits ? r->units[i] : r->prot0;
}

int hl_unit_set(hl_region *r, size_t a, size_t b, unsigned clear, unsigned set)
{
    if (!r->units) {
        size_t n = r->maplen / r->release_unit;
        unsigned char *u = hl_mem_alloc(round_up(n, KB4));
        if (!u)
            return -1;
        memset(u, r->prot0, n);
        r->units = u;
        r->nunits = n;
    }
    for (size_t i = a / r->release_unit; i < r->nunits && i * r->release_unit < b; i++)
        r->units[i] = (unsigned char)((r->units[i] & ~clear) | set);
    return 0;
}

int hl_unit_ordinary(const hl_region *r, size_t off)
{
    return (r->origin == ORIGIN_ALLOC && r->page == PAGE_THP) || (hl_unit_get(r, off) & HL_U_ORDINARY);
}

/* ---- giving back ------------------------------------------------------ */

static void kernel_unmap(uintptr_t a, size_t len, hl_release_list *rl)
{
    if (rl->nk > 0 && rl->kernel_a[rl->nk - 1] + rl->kernel_len[rl->nk - 1] == a) {
        rl->kernel_len[rl->nk - 1] += len;
    } else if (rl->nk < HL_RELEASE_MAX) {
        rl->kernel_a[rl->nk] = a;
        rl->kernel_len[rl->nk++] = len;
    } else if (hl_os_unmap(a, len) != 0 && !rl->kernel_err) {
        rl->kernel_err = errno;
    }
}

/* The pieces of [a, b) (offsets) in r's ordinary units that the program still maps: unmapped for real. */
static void unmap_ordinary(hl_region *r, size_t a, size_t b, hl_release_list *rl)
{
    for (size_t off = a; off < b;) {
        size_t ue = min_sz(b, round_down(off, r->release_unit) + r->release_unit);
        if (hl_unit_ordinary(r, off)) {
            for (size_t x = off; x < ue;) {
                size_t end = max_sz(hl_region_same_run_end(r, x, ue), x + KB4);
                if (hl_region_mapped_at(r, x))
                    kernel_unmap(r->base + x, end - x, rl);
                x = end;
            }
        }
        off = ue;
    }
}

static void slot_free(hl_region *r)
{
    if (r->shadow) { /* what is left of the shadow: all of it but the pieces moved over the region */
        size_t cur = 0;
        const hl_iv *v = hl_ivs_data(&r->shadow_moved);
        for (size_t i = 0; i <= r->shadow_moved.n; i++) {
            size_t end = i < r->shadow_moved.n ? v[i].a : r->shadow_len;
            if (end > cur)
                hl_defer_unmap(r->shadow + cur, end - cur);
            if (i < r->shadow_moved.n)
                cur = v[i].b;
        }
        ivs_release(&r->shadow_moved);
    }
    ivs_release(&r->unmapped);
    ivs_release(&r->released);
    ivs_release(&r->locked);
    if (r->units)
        hl_mem_free(r->units, round_up(r->nunits, KB4));
    r->units = NULL;
    hl_record_gone(r->rec);
    if (r->origin == ORIGIN_ALLOC)
        atomic_fetch_sub(&hl_nalloc, 1);
    r->in_use = 0;
    atomic_fetch_sub(&hl_nreg, 1);
    while (hl_reg_hwm > 0 && !hl_reg[hl_reg_hwm - 1].in_use)
        hl_reg_hwm--;
    bounds_recompute();
}

static int owns_anything(const hl_region *r) { return first_owned(r, r->base) != 0; }

static void release_now(hl_region *r, size_t a, size_t b, int punch)
{
    if (ivs_reserve(&r->released, r->released.n + 1) != 0) {
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s keeps its pages until exit", r->what);
        return;
    }
    if (hl_os_release(r->base + a, b - a, punch) != 0) {
        hl_warn_once(R_RELEASE, "giving back pages of %s at %p failed (%s): kept", r->what, (void *)(r->base + a),
                     strerror(errno));
        return;
    }
    hl_ivs_add(&r->released, a, b);
}

/* Queues [a, b) (offsets, whole units, owned, idle) for release after the lock, one entry per
 * run of units that is punched or not; done at once, under the lock, when the list is full. */
static void queue(hl_region *r, size_t a, size_t b, hl_release_list *rl)
{
    while (a < b && hl_unit_ordinary(r, a)) { /* unmapped for real already, piece by piece */
        if (ivs_reserve(&r->released, r->released.n + 1) == 0)
            hl_ivs_add(&r->released, a, a + r->release_unit);
        a += r->release_unit;
    }
    if (a < b) {
        size_t e = a;
        while (e < b && !hl_unit_ordinary(r, e))
            e += r->release_unit;
        if (e < b) { /* a run of huge units, then more ordinary ones */
            queue(r, a, e, rl);
            queue(r, e, b, rl);
            return;
        }
    }
    while (a < b) {
        int punch = (r->flags & HL_RF_SHARED) && !(hl_unit_get(r, a) & HL_U_FORKED);
        size_t e = a + r->release_unit;
        while (e < b && ((r->flags & HL_RF_SHARED) && !(hl_unit_get(r, e) & HL_U_FORKED)) == punch)
            e += r->release_unit;
        e = min_sz(e, b);
        if (rl && rl->n < HL_RELEASE_MAX && ivs_reserve(&r->released, r->released.n + (size_t)rl->n + 1) == 0 &&
            hl_busy_add(r->base + a, r->base + e) == 0) {
            rl->v[rl->n++] = (hl_release){r->base + a, e - a, (int)(r - hl_reg), r->gen, punch, 0};
        } else {
            release_now(r, a, e, punch);
        }
        a = e;
    }
}

/* Queues what r still owns inside [a, b) (offsets, whole units), skipping busy ranges. */
static void queue_owned(hl_region *r, size_t a, size_t b, hl_release_list *rl)
{
    size_t cur = a;
    while (cur < b) {
        uintptr_t o = first_owned(r, r->base + cur);
        if (!o || o - r->base >= b)
            break;
        size_t s = o - r->base, e = min_sz(b, hl_owned_run_end(r, o) - r->base);
        size_t u = s;
        while (u < e) { /* split around busy units */
            size_t v = u;
            while (v < e && !hl_busy_overlaps(r->base + v, r->base + v + r->release_unit))
                v += r->release_unit;
            queue(r, u, v, rl);
            while (v < e && hl_busy_overlaps(r->base + v, r->base + v + r->release_unit))
                v += r->release_unit;
            u = v;
        }
        cur = e;
    }
}

void hl_release_done(hl_release_list *rl)
{
    for (int i = 0; i < rl->n; i++) {
        hl_release *x = &rl->v[i];
        hl_busy_del(x->a, x->a + x->len);
        hl_region *r = &hl_reg[x->slot];
        if (!r->in_use || r->gen != x->gen)
            continue; /* cannot happen: a queued range stays owned */
        size_t a = x->a - r->base;
        if (x->ok)
            hl_ivs_add(&r->released, a, a + x->len); /* reserved when queued */
        else
            hl_warn_once(R_RELEASE, "giving back pages of %s at %p failed: kept", r->what, (void *)x->a);
        if ((r->flags & HL_RF_DYING) && !owns_anything(r)) {
            hl_log(2, "%s: region at %p gone", r->what, (void *)r->base);
            slot_free(r);
        }
    }
    rl->n = 0;
    hl_wake();
}

void hl_region_destroy(hl_region *r, hl_release_list *rl)
{
    if (rl)
        unmap_ordinary(r, 0, r->maplen, rl);
    r->flags |= HL_RF_DYING;
    hl_ivs_add(&r->unmapped, 0, r->maplen);
    queue_owned(r, 0, r->maplen, rl);
    if (!owns_anything(r)) {
        hl_log(2, "%s: region at %p gone", r->what, (void *)r->base);
        slot_free(r);
    }
}

void hl_region_forget(hl_region *r) { slot_free(r); }

void hl_region_drop(hl_region *r, size_t a, size_t b)
{
    if (hl_ivs_add(&r->released, a, b) != 0)
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s may be unmapped twice", r->what);
    if (!owns_anything(r))
        slot_free(r);
}

/* Whether the program maps nothing of r any more: every byte unmapped or no longer ours. */
static int nothing_mapped(const hl_region *r)
{
    size_t x = 0;
    while (x < r->maplen) {
        size_t u = ivs_run_end(&r->unmapped, x, r->maplen, 1), d = ivs_run_end(&r->released, x, r->maplen, 1);
        size_t next = max_sz(u, d);
        if (next == x)
            return 0;
        x = next;
    }
    return 1;
}

void hl_region_unmap(hl_region *r, size_t a, size_t b, hl_release_list *rl, int real)
{
    if (real && rl)
        unmap_ordinary(r, a, b, rl);
    if (hl_ivs_add(&r->unmapped, a, b) != 0) {
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s keeps its pages until exit", r->what);
        return;
    }
    if (nothing_mapped(r)) {
        hl_region_destroy(r, rl);
        return;
    }
    hl_iv j = ivs_around(&r->unmapped, a);
    size_t ca = round_up(j.a, r->release_unit), cb = round_down(j.b, r->release_unit);
    if (ca < cb)
        queue_owned(r, ca, cb, rl);
}

int hl_region_shrink(hl_region *r, size_t newlen, hl_release_list *rl)
{
    size_t keep = round_up(newlen, r->release_unit);
    if (keep >= r->maplen || keep == 0)
        return -1;
    if (hl_ivs_add(&r->unmapped, keep, r->maplen) != 0)
        return -1;
    queue_owned(r, keep, r->maplen, rl);
    r->userlen = newlen;
    return 0;
}

hl_region *hl_region_add(uintptr_t p, size_t maplen, size_t userlen, size_t unit, int origin, int page,
                         const char *what, int rec, int prot, unsigned flags)
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
    r->origin = origin;
    r->page = page;
    r->rec = rec;
    r->flags = flags;
    r->prot0 = (unsigned char)(prot & HL_U_PROT);
    r->base = p;
    r->maplen = maplen;
    r->userlen = userlen;
    r->release_unit = unit;
    r->gen = ++g_gen;
    if (unit > KB4 && hl_unit_set(r, 0, 0, 0, 0) != 0) {
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s not placed on huge pages", what);
        return NULL;
    }
    r->in_use = 1;
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
        hl_ivs_add(&r->unmapped, pad, maplen);
    return r;
}

int hl_regions_munmap(uintptr_t a, uintptr_t b, hl_release_list *rl)
{
    uintptr_t cur = a;
    while (cur < b) {
        hl_region *r;
        uintptr_t s = hl_next_owned(cur, b, &r);
        if (s > cur) {
            kernel_unmap(cur, s - cur, rl);
            cur = s;
            continue;
        }
        uintptr_t e = min_sz(b, hl_owned_run_end(r, cur));
        hl_region_unmap(r, cur - r->base, e - r->base, rl, 1);
        cur = e;
    }
    return 0;
}
