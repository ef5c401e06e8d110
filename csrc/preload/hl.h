/*
 * The preload library's internal interface (the csrc/preload C files, built into libhugeload.so).
 *
 * The library is split the way mimalloc splits an allocator; each part's
 * header comment says what it owns:
 *   os.c        real symbols (dlsym RTLD_NEXT), the syscall bootstrap before
 *               dlsym answers, the bootstrap arena, and the OS primitives the
 *               rest calls (hl_os_*): the only place that talks to the kernel
 *               for the bookkeeping, so tests can replace it
 *   log.c       log lines (deferred while the lock is held), report records,
 *               the report
 *   config.c    HUGELOAD_* environment -> settings, node map, constructor,
 *               destructor, fork handlers, SIGUSR1
 *   policy.c    the page-size choice Python decided (HUGELOAD_POLICY), and the
 *               exported hugeload_page_choice_kb for the parity test
 *   regions.c   the region table: one owner per address (no libc calls; it
 *               compiles against tests/native/test_regions.c's fake OS)
 *   hugemem.c   anonymous huge memory: the 1 GB -> 2 MB -> THP cascade,
 *               pre-faulting, VMA names
 *   alloc.c     large allocations (malloc family logic), fork safety
 *   advice.c    munmap/madvise/posix_madvise/mlock/munlock on managed ranges
 *   redirect.c  the redirect index v2 (reader), node-local copy choice
 *   filemap.c   file mappings: staged, direct (hugetlbfs), copy
 *   override.c  ONLY the exported symbols, each a forward to the hl_* above
 * Built with -fvisibility=hidden: nothing here is exported except what
 * override.c and policy.c mark HL_EXPORT.
 *
 * Locking: one mutex (hl_lock/hl_unlock) guards the region table.  Under it
 * there is no open/read/write/stat and no cancellation point: log lines are
 * formatted into a buffer the lock guards and written by hl_unlock() after the
 * mutex is released.  munmap/mmap/madvise may run under it (they are neither
 * cancellation points nor blocking on other processes), so the table and the
 * address space never disagree as seen by another thread.
 */
#ifndef HL_H
#define HL_H

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Everything declared below is internal: hidden declarations let the compiler reach the
 * globals the hot path reads (hl_alloc_thresh, hl_arena, r_*) PC-relative, not through the GOT. */
#pragma GCC visibility push(hidden)

#define HL_EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define KB4 ((size_t)4096)
#define MB2 ((size_t)2 << 20)
#define GB1 ((size_t)1 << 30)

enum { PAGE_4K, PAGE_THP, PAGE_2M, PAGE_1G };
/* Where a region's memory came from (report key "fill=", kept for compatibility). */
enum { ORIGIN_NONE, ORIGIN_STAGED, ORIGIN_DIRECT, ORIGIN_COPY, ORIGIN_ALLOC };
extern const char *const hl_page_name[];
extern const char *const hl_origin_name[];

/* Reasons logged once each. */
enum {
    R_1G, R_2M, R_THP, R_READ, R_STAGED, R_PRIVW, R_NOTSTAGED, R_TABLE, R_RELEASE,
    R_INDEX, R_BOOKKEEP, R_ENV, R_MPROTECT, R_OVERLAP, R_POPULATE, R_NODE, R_TRUST,
    R_FORK, R_ADVICE, R_NAME,
};

static inline size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }
static inline size_t round_down(size_t x, size_t a) { return x & ~(a - 1); }
static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static inline size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }
static inline int pow2(size_t a) { return a && !(a & (a - 1)); }

/* ---- os.c ---------------------------------------------------------------- */
extern void *(*r_mmap)(void *, size_t, int, int, int, off_t);
extern int (*r_munmap)(void *, size_t);
extern int (*r_madvise)(void *, size_t, int);
extern int (*r_posix_madvise)(void *, size_t, int);
extern int (*r_mlock)(const void *, size_t);
extern int (*r_munlock)(const void *, size_t);
extern void *(*r_malloc)(size_t);
extern void (*r_free)(void *);
extern void *(*r_calloc)(size_t, size_t);
extern void *(*r_realloc)(void *, size_t);
extern int (*r_posix_memalign)(void **, size_t, size_t);
extern void *(*r_aligned_alloc)(size_t, size_t);
extern void *(*r_memalign)(size_t, size_t);
extern size_t (*r_usable)(void *);
void hl_resolve(void);

#define ARENA_SIZE ((size_t)256 * 1024)
extern unsigned char hl_arena[ARENA_SIZE];
static inline int in_arena(const void *p) { return (uintptr_t)p - (uintptr_t)hl_arena < ARENA_SIZE; }
static inline size_t arena_size_of(const void *p) { return ((const size_t *)p)[-1]; }

/* OS primitives used by the bookkeeping (regions.c); 0 or -1 with errno. */
int hl_os_unmap(uintptr_t addr, size_t len);
/* Gives a region's pages back: `shared` (a memfd of ours mapped shared, HL_RF_SHARED)
 * punches them out of the file first, since munmap alone would leave them in it. */
int hl_os_release(uintptr_t addr, size_t len, int shared);
void *hl_os_pages(size_t bytes);          /* zeroed private memory, NULL on failure */
void hl_os_pages_free(void *p, size_t bytes);
uint64_t hl_now_ns(void);
long hl_read_long(const char *path);      /* never under the lock */
ssize_t hl_read_small(const char *path, char *buf, size_t size);

/* ---- log.c --------------------------------------------------------------- */
extern int hl_log_level;
void hl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hl_warn_once(int reason, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hl_lock(void);
void hl_unlock(void); /* releases the mutex, then writes the lines logged under it */
void hl_lock_reinit_child(void);
void hl_encode_what(const char *path, char *out, size_t outsz);
int hl_record(const char *what, uint64_t bytes, uint64_t mapped, int page, int origin, uint64_t ns,
              uintptr_t addr, int live);
void hl_record_gone(int rec);
void hl_records_forget(void);
void hl_report(void);
extern char hl_report_path[];

/* ---- config.c / policy.c ------------------------------------------------- */
enum { POL_AUTO, POL_1G, POL_2M };
typedef struct {
    unsigned long long auto_1g_min, auto_1g_max_waste_ppm, forced_1g_min;
} hl_policy;
extern int hl_active;
extern size_t hl_alloc_thresh; /* the malloc hot path's one compare */
extern int hl_copy, hl_page_size, hl_thp_ok, hl_fill_threads, hl_have_files;
extern hl_policy hl_pol;
extern size_t hl_min_file;
extern char hl_files[];
extern char hl_index_path[];
extern int hl_node_env;          /* HUGELOAD_NODE, -1 unset */
int hl_parse_page_size(const char *s, int *out);
int hl_parse_policy(const char *s, hl_policy *out);
size_t hl_first_page(size_t bytes, int page_size, const hl_policy *pol); /* GB1 or MB2 */
int hl_cpu_node(int cpu);        /* -1 when unknown */
int hl_process_node(void);

#define F_1G 1u
#define F_2M 2u
#define F_THP 4u
#define F_PREAD 8u
#define F_EOF 16u
#define F_POPULATE 32u
#ifdef HUGELOAD_FAULT_INJECTION
extern unsigned hl_fault;
#define FAULT(f) (hl_fault & (f))
#else
#define FAULT(f) 0
#endif

/* ---- regions.c ----------------------------------------------------------- */
typedef struct {
    size_t a, b;
} hl_iv;
#define IV_INLINE 6
/* Sorted, disjoint, non-adjacent [a, b) offsets; inline first, then hl_os_pages. */
typedef struct {
    hl_iv *heap;
    size_t n, cap;
    hl_iv inl[IV_INLINE];
} hl_interval_set;

#define HL_RF_DONTFORK 1u   /* the program asked MADV_DONTFORK for the whole region */
#define HL_RF_WIPEONFORK 2u /* ... MADV_WIPEONFORK (emulated for hugetlb) */
#define HL_RF_WRITABLE 4u   /* mapped writable: a forked child may write to it */
#define HL_RF_SHARED 8u     /* 1 GB pages of a memfd of ours, mapped shared (hugemem.c) */
#define HL_RF_SEALED 16u    /* ... and mapped from a read-only fd: nobody can write it */

typedef struct {
    int in_use;
    int origin, page, rec;
    unsigned flags;
    uintptr_t base;
    size_t maplen;             /* bytes mapped, multiple of release_unit */
    size_t userlen;            /* bytes the program asked for */
    size_t release_unit;       /* what can be given back: the huge page size, 4 KB for THP */
    hl_interval_set unmapped;  /* offsets the program has unmapped (4 KB multiples) */
    hl_interval_set released;  /* offsets given back to the kernel: owned by nobody */
    char what[48];
} hl_region;

#define HL_MAX_REGIONS 1024
extern hl_region hl_reg[HL_MAX_REGIONS];
extern int hl_reg_hwm;
extern atomic_int hl_nreg;   /* live regions: the munmap/madvise/mlock fast-path test */
extern atomic_int hl_nalloc; /* live allocation regions: the free fast-path test */
extern atomic_uintptr_t hl_lo, hl_hi;

/* All of these expect the lock held. */
hl_region *hl_region_add(uintptr_t p, size_t maplen, size_t userlen, size_t unit, int origin, int page,
                         const char *what, int rec);
hl_region *hl_region_owner(uintptr_t x);
uintptr_t hl_next_owned(uintptr_t x, uintptr_t end, hl_region **owner);
uintptr_t hl_owned_run_end(const hl_region *r, uintptr_t x);
int hl_regions_munmap(uintptr_t a, uintptr_t b);        /* 0 or an errno value */
void hl_region_unmap(hl_region *r, size_t a, size_t b); /* offsets */
void hl_region_destroy(hl_region *r);
void hl_region_forget(hl_region *r);                     /* no munmap: the child lost it */
int hl_region_shrink(hl_region *r, size_t newlen);       /* 0 when the tail went back */
hl_region *hl_alloc_region(uintptr_t p);
int hl_ivs_add(hl_interval_set *s, size_t a, size_t b);
int hl_ivs_covers(const hl_interval_set *s, size_t a, size_t b);
static inline hl_iv *hl_ivs_data(const hl_interval_set *s) { return s->heap ? s->heap : (hl_iv *)s->inl; }

/* ---- hugemem.c ----------------------------------------------------------- */
typedef struct {
    void *p;
    size_t maplen, unit;
    int page;
    uint64_t populate_ns;
    int fd; /* the memfd behind 1 GB pages (HL_RF_SHARED), else -1; the caller closes it */
} hl_anon;
int hl_anon_huge(size_t size, size_t align, const char *what, int populate, hl_anon *out);
void hl_name_vma(void *p, size_t len, const char *what);
int hl_populate(void *p, size_t len, size_t unit); /* 0 or an errno value */

/* ---- alloc.c ------------------------------------------------------------- */
void *hl_huge_alloc(size_t n, size_t align, const char *what);
int hl_huge_free(void *p);
size_t hl_huge_capacity(const void *p);
void *hl_realloc(void *p, size_t n);
void hl_fork_prepare_regions(void); /* under the lock */
void hl_fork_child_regions(void);
/* Our allocation regions start 2 MiB-aligned: anything else is not ours. */
static inline int may_be_huge_alloc(const void *p) { return ((uintptr_t)p & (MB2 - 1)) == 0; }

/* ---- advice.c ------------------------------------------------------------ */
enum { OP_MADVISE, OP_PMADVISE, OP_MLOCK, OP_MUNLOCK };
int hl_munmap_slow(void *addr, size_t len);
int hl_range_op_slow(void *addr, size_t len, int op, int adv); /* 0 or an errno value */
static inline int hl_maybe_managed(uintptr_t a, size_t len)
{
    if (likely(atomic_load_explicit(&hl_nreg, memory_order_relaxed) == 0))
        return 0;
    if (len == 0 || len > UINTPTR_MAX - a - KB4)
        return 0;
    return !(a + len <= atomic_load(&hl_lo) || a >= atomic_load(&hl_hi));
}

/* ---- redirect.c ---------------------------------------------------------- */
typedef struct {
    char path[4096];
    int node;
} hl_staged_copy;
int hl_index_lookup(const void *st, const char *what, hl_staged_copy *out);
void hl_index_reset_child(void);
int hl_trusted(const void *st, const char *what, const char *kind); /* root-owned, no g/o write */

/* ---- filemap.c ----------------------------------------------------------- */
void *hl_mmap_file(void *addr, size_t len, int prot, int flags, int fd, off_t off);

#pragma GCC visibility pop

#endif
