/*
 * The preload library's internal interface (the csrc/preload C files, built into libhugeload.so).
 *
 * Its specification is the kernel: a program that works without the library
 * works with it, and every call means what the kernel says.  Where the
 * library cannot give a call its meaning on huge pages, it gives the range
 * back to the kernel's own mapping first ("demotes" it) and forwards the call.
 * tests/difftest checks this mechanically: random call sequences, run with
 * and without the library, must observe the same.
 *
 * The library is split the way mimalloc splits an allocator; each part's
 * header comment says what it owns:
 *   os.c        real symbols (dlsym RTLD_NEXT), the syscall bootstrap before
 *               dlsym answers, the bootstrap arena, the library's own memory
 *               (hl_mem_*), and every OS primitive (hl_os_*): the only part
 *               that talks to the kernel
 *   log.c       log lines (only to the stderr identified at start-up, never
 *               while the lock is held), the lock and its wait, report
 *               records, the report (opened O_NOFOLLOW, checked)
 *   config.c    HUGELOAD_* environment -> settings, node map, constructor,
 *               destructor (no signal handler: the library installs none)
 *   policy.c    the page-size choice Python decided (HUGELOAD_POLICY), and the
 *               exported hugeload_page_choice_kb for the parity test
 *   regions.c   the region table: one owner per address, per-unit state, the
 *               busy ranges and the release protocol (no libc calls; it
 *               compiles against tests/native/test_regions.c's fake OS)
 *   hugemem.c   anonymous huge memory: the 1 GB -> 2 MB -> THP cascade,
 *               pre-faulting, VMA names
 *   alloc.c     large allocations (malloc family logic)
 *   demote.c    a managed range handed back to ordinary memory (the kernel's
 *               own mapping of the file, or private anonymous memory)
 *   advice.c    munmap, madvise, posix_madvise, mlock, munlock, mprotect,
 *               mremap and MAP_FIXED on ranges that touch managed regions
 *   fork.c      fork handlers and the one per-region fork policy
 *   redirect.c  the redirect index v2/v3 (reader), node-local copy choice
 *   filemap.c   file mappings: staged, direct (hugetlbfs), copy
 *   override.c  ONLY the exported symbols, each a forward to the hl_* above
 * Built with -fvisibility=hidden: nothing here is exported except what
 * override.c and policy.c mark HL_EXPORT.
 *
 * Slow paths (every hl_* an override calls once its fast test fails) run
 * under one discipline, set up in override.c (HL_SLOW): cancellation
 * disabled, errno saved and set only on failure, and every frame under 1 KB
 * (tests/test_preload.py checks -fstack-usage and runs each interposer on a
 * 16 KB thread stack).
 *
 * Locking: one mutex (hl_lock/hl_unlock) guards the region table.  Under it:
 * no memset or memcpy of program memory, no munmap, no file or /sys read, no
 * write, no cancellation point.  Work that needs those runs after hl_unlock()
 * on ranges marked busy (regions.c): another thread that needs a busy range
 * waits (hl_wait) until it is idle, as the kernel's own mmap lock would make
 * it wait.  mmap, mremap, mprotect and madvise of the library's own ranges
 * may run under the lock, so the table and the address space never disagree
 * as seen by another thread.
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
    R_FORK, R_ADVICE, R_NAME, R_SHARED, R_DEMOTE, R_REPORT,
};

static inline size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }
static inline size_t round_down(size_t x, size_t a) { return x & ~(a - 1); }
static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static inline size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }
static inline int pow2(size_t a) { return a && !(a & (a - 1)); }

/* ---- os.c ---------------------------------------------------------------- */
extern void *(*r_mmap)(void *, size_t, int, int, int, off_t);
extern int (*r_munmap)(void *, size_t);
extern void *(*r_mremap)(void *, size_t, size_t, int, ...);
extern int (*r_mprotect)(void *, size_t, int);
extern int (*r_madvise)(void *, size_t, int);
extern int (*r_posix_madvise)(void *, size_t, int);
extern int (*r_mlock)(const void *, size_t);
extern int (*r_munlock)(const void *, size_t);
extern int (*r_msync)(void *, size_t, int);
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

/* OS primitives: 0 (or a pointer) on success; -1 (NULL) with errno, unless said otherwise. */
int hl_os_unmap(uintptr_t addr, size_t len);
/* Gives a range of a region back: `punch` (a memfd of ours, mapped shared, that no other
 * process maps) takes the pages out of the file first, since munmap alone leaves them there. */
int hl_os_release(uintptr_t addr, size_t len, int punch);
int hl_os_punch(uintptr_t addr, size_t len);
void *hl_os_map_anon(void *at, size_t len, int prot, int flags); /* flags added to MAP_PRIVATE|MAP_ANONYMOUS */
void *hl_os_map_fd(void *at, size_t len, int prot, int flags, int fd, off_t off);
void *hl_os_remap(void *old, size_t oldlen, size_t newlen, int flags, void *to);
int hl_os_protect(uintptr_t addr, size_t len, int prot);
int hl_os_advise(uintptr_t addr, size_t len, int adv); /* 0 or an errno value */
int hl_os_lock(uintptr_t addr, size_t len, int lock);  /* 0 or an errno value */
int hl_os_lock_nofault(uintptr_t addr, size_t len); /* mlock2(MLOCK_ONFAULT): 0 or an errno value */
int hl_os_hole(uintptr_t addr, size_t len);          /* 1 when a page of the range is not mapped */
int hl_os_sync(uintptr_t addr, size_t len, int flags); /* 0 or an errno value */
int hl_os_mapped(uintptr_t addr);                      /* 1 when a page is mapped there */
void hl_os_name(void *p, size_t len, const char *name);
int hl_os_memfd_huge(const char *name, size_t len, int shift);
int hl_os_open_ro(const char *path);      /* O_RDONLY|O_CLOEXEC */
int hl_os_open(const char *path, int flags, int mode);
int hl_os_getpid(void);
unsigned hl_os_geteuid(void);
int hl_os_reopen_ro(int fd);              /* the same open file again, read-only, via /proc/self/fd */
int hl_os_accmode(int fd);                /* O_RDONLY/O_WRONLY/O_RDWR, O_PATH, or -1 */
int hl_os_close(int fd);                  /* keeps errno */
int hl_os_fstat(int fd, void *st);        /* struct stat */
int hl_os_stat(const char *path, void *st);
long hl_os_fs_type(int fd, size_t *block);/* statfs f_type, -1 on failure */
ssize_t hl_os_fd_path(int fd, char *out, size_t size);
ssize_t hl_os_read_all(int fd, void *buf, size_t size, off_t off); /* pread until size, EOF or error */
ssize_t hl_os_read(int fd, void *buf, size_t size);                /* read, again after EINTR */
ssize_t hl_os_read_file(const char *path, char *buf, size_t size); /* NUL-terminated */
long hl_os_read_long(const char *path);
void hl_os_write_all(int fd, const char *buf, size_t n);
int hl_os_pipe(int fds[2]);
int hl_os_affinity(void *set, size_t size); /* this thread's cpu_set_t */
int hl_os_current_node(void);             /* getcpu's node, -1 when unknown */
long hl_os_cpus(void);
uint64_t hl_now_ns(void);
/* Runs fn(arg_i) for i < n on up to n threads (the caller runs the first), signals blocked on
 * the helpers; cancellation is already off (slow path). */
void hl_os_parallel(void (*fn)(void *), void *args, size_t argsize, int n);
/* The library's own memory: whole pages, zeroed, from an address range reserved at start-up,
 * so it never lands in a hole the program just unmapped.  Thread-safe, any lock held or not. */
void *hl_mem_alloc(size_t bytes);
void hl_mem_free(void *p, size_t bytes);
void hl_mem_init(void);
void hl_mem_reinit_child(void); /* the child of fork: a fresh mutex */

/* ---- log.c --------------------------------------------------------------- */
extern int hl_log_level;
void hl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hl_warn_once(int reason, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int hl_warn_wanted(int reason); /* whether hl_warn_once(reason) would write: compute costly arguments only then */
void hl_log_init(void); /* identifies stderr (dev/ino of fd 2) */
void hl_lock(void);
void hl_unlock(void); /* releases the mutex, then writes the lines logged under it */
void hl_wait(void);   /* under the lock: sleeps until a busy range is released */
void hl_wake(void);
/* Under the lock: unmap [a, a + len) right after the lock is released (a range only the
 * library knows, which nothing else can take until then). */
void hl_defer_unmap(uintptr_t a, size_t len);
int hl_defer_pending(void);
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
/* Sorted, disjoint, non-adjacent [a, b) offsets; inline first, then hl_mem_alloc. */
typedef struct {
    hl_iv *heap;
    size_t n, cap;
    hl_iv inl[IV_INLINE];
} hl_interval_set;

/* Region flags. */
#define HL_RF_SHARED 1u      /* 1 GB pages of a memfd of ours, mapped shared (hugemem.c): punch to give back */
#define HL_RF_PRIVATE_REF 2u /* stands for a private map (the program's MAP_PRIVATE, or anonymous memory) */
#define HL_RF_DYING 4u       /* every byte unmapped: the slot goes when its releases are done */
#define HL_RF_TAIL 8u        /* the 2 MB part of an allocation in two parts, right after its 1 GB part */

/* Per-unit state (one byte per release unit; THP regions only once needed). */
#define HL_U_PROT 7u         /* the protection the program set */
#define HL_U_DONTFORK 8u     /* MADV_DONTFORK: a child does not get it */
#define HL_U_WIPEONFORK 16u  /* MADV_WIPEONFORK, emulated on hugetlb: a child gets zeros */
#define HL_U_FORKED 64u      /* shared with a forked process: never punched, demoted before a write */
#define HL_U_ORDINARY 128u   /* an allocation's unit handed to ordinary memory (demote.c): still the
                                allocation's, but every call on it is the real one */

typedef struct {
    int in_use, gen;
    int origin, page, rec;
    unsigned flags;
    unsigned char prot0;       /* every unit's state until `units` is allocated */
    uintptr_t base;
    size_t maplen;             /* bytes mapped, multiple of release_unit */
    size_t userlen;            /* bytes the program asked for */
    size_t release_unit;       /* what can be given back: the huge page size, 4 KB for THP */
    hl_interval_set unmapped;  /* offsets the program has unmapped (4 KB multiples) */
    hl_interval_set released;  /* offsets given back to the kernel: owned by nobody */
    hl_interval_set locked;    /* offsets the program mlock'ed (4 KB units; the kernel does not
                                  mark hugetlb VMAs locked, and a fork does not pass it on) */
    unsigned char *units;      /* per-unit state, NULL: all prot0 */
    size_t nunits;
    uintptr_t shadow;          /* the kernel's own mapping of the file, PROT_NONE (filemap.c), or 0 */
    size_t shadow_len;         /* maplen: the file's map, then a PROT_NONE reservation */
    size_t shadow_file;        /* bytes of the shadow that map the file */
    hl_interval_set shadow_moved; /* offsets of the shadow moved over the region (demote.c) */
    char what[48];
} hl_region;

#define HL_MAX_REGIONS 1024
extern hl_region hl_reg[HL_MAX_REGIONS];
extern int hl_reg_hwm;
extern atomic_int hl_nreg;   /* live regions: the munmap/madvise/mlock fast-path test */
extern atomic_int hl_nalloc; /* live allocation regions: the free fast-path test */
extern atomic_uintptr_t hl_lo, hl_hi;

/* Releases queued under the lock, done after it (hl_release_run), finished under it again. */
typedef struct {
    uintptr_t a;
    size_t len;
    int slot, gen;
    int punch, ok;
} hl_release;
#define HL_RELEASE_MAX 16
typedef struct {
    hl_release v[HL_RELEASE_MAX];
    int n;
    uintptr_t kernel_a[HL_RELEASE_MAX]; /* ranges nobody owns, to munmap for the program */
    size_t kernel_len[HL_RELEASE_MAX];
    int nk, kernel_err;
} hl_release_list;

/* All of these expect the lock held. */
hl_region *hl_region_add(uintptr_t p, size_t maplen, size_t userlen, size_t unit, int origin, int page,
                         const char *what, int rec, int prot, unsigned flags);
hl_region *hl_region_owner(uintptr_t x);
uintptr_t hl_next_owned(uintptr_t x, uintptr_t end, hl_region **owner);
uintptr_t hl_owned_run_end(const hl_region *r, uintptr_t x);
int hl_region_mapped_at(const hl_region *r, size_t off);         /* the program maps this 4 KB page */
size_t hl_region_same_run_end(const hl_region *r, size_t off, size_t limit); /* end of mapped/unmapped run */
unsigned hl_unit_get(const hl_region *r, size_t off);
int hl_unit_set(hl_region *r, size_t a, size_t b, unsigned clear, unsigned set); /* offsets; -1 out of memory */
int hl_regions_munmap(uintptr_t a, uintptr_t b, hl_release_list *rl); /* 0 or an errno value */
/* [a, b) (offsets) is no longer the program's: `real` when the program unmapped it (ordinary
 * units are unmapped for real, queued in rl), 0 when the kernel replaced or moved it (MAP_FIXED, mremap). */
void hl_region_unmap(hl_region *r, size_t a, size_t b, hl_release_list *rl, int real);
int hl_unit_ordinary(const hl_region *r, size_t off); /* every call on it is the real one */
void hl_region_destroy(hl_region *r, hl_release_list *rl);
void hl_region_drop(hl_region *r, size_t a, size_t b);  /* offsets, whole units: no longer ours, not unmapped */
void hl_region_forget(hl_region *r);                     /* the whole region, no munmap */
int hl_region_shrink(hl_region *r, size_t newlen, hl_release_list *rl);
size_t hl_region_capacity(const hl_region *r);          /* the owned run from base */
hl_region *hl_alloc_region(uintptr_t p);                 /* the allocation (its first part) at p */
/* An allocation in two parts (hl_anon_huge_parts) is two regions side by side, the second
 * flagged HL_RF_TAIL; free, realloc and malloc_usable_size see one block through these. */
hl_region *hl_alloc_tail(const hl_region *head);         /* its second part, or NULL */
size_t hl_alloc_capacity(const hl_region *head);         /* the owned run from base, across parts */
void hl_alloc_destroy(hl_region *head, hl_release_list *rl);
void hl_alloc_shrink(hl_region *head, size_t newlen, hl_release_list *rl); /* userlen becomes newlen */
void hl_release_done(hl_release_list *rl);              /* after hl_release_run, lock held again */
int hl_ivs_add(hl_interval_set *s, size_t a, size_t b);
int hl_ivs_sub(hl_interval_set *s, size_t a, size_t b);          /* -1 when out of memory */
int hl_ivs_overlaps(const hl_interval_set *s, size_t a, size_t b);
size_t hl_ivs_boundary(const hl_interval_set *s, size_t x, size_t limit); /* next a or b after x */
int hl_ivs_covers(const hl_interval_set *s, size_t a, size_t b);
static inline hl_iv *hl_ivs_data(const hl_interval_set *s) { return s->heap ? s->heap : (hl_iv *)s->inl; }
/* Busy ranges: work outside the lock in progress there; others wait (hl_wait) until idle. */
int hl_busy_overlaps(uintptr_t a, uintptr_t b);
int hl_busy_add(uintptr_t a, uintptr_t b);               /* -1 when the table is full */
void hl_busy_del(uintptr_t a, uintptr_t b);
int hl_busy_any(void);
/* Takes the lock and waits until [a, b) is idle. */
void hl_lock_idle(uintptr_t a, uintptr_t b);

/* ---- release (advice.c): outside the lock, then hl_release_done ------------ */
void hl_release_run(hl_release_list *rl);
void hl_unlock_release(hl_release_list *rl); /* hl_unlock, run, relock, done, unlock */

/* ---- hugemem.c ----------------------------------------------------------- */
typedef struct {
    void *p;
    size_t maplen, unit;
    int page;
    uint64_t populate_ns;
    int fd; /* the memfd behind 1 GB pages (HL_RF_SHARED), else -1; the caller closes it */
} hl_anon;
int hl_anon_huge(size_t size, size_t align, const char *what, int populate, hl_anon *out);
/* The same, but when the 1 GB pool holds fewer pages than size needs (and at least one), its
 * pages for the first GiBs and 2 MB pages for the rest, side by side (out[0], out[1]): the
 * number of parts, 0 when nothing huge was mapped.  Large allocations (alloc.c). */
int hl_anon_huge_parts(size_t size, size_t align, const char *what, int populate, hl_anon out[2]);
int hl_populate(void *p, size_t len, size_t unit); /* 0 or an errno value */

/* ---- alloc.c ------------------------------------------------------------- */
void *hl_huge_alloc(size_t n, size_t align, const char *what);
int hl_huge_free(void *p);
size_t hl_huge_capacity(const void *p, int usable);
void *hl_realloc(void *p, size_t n);
/* Our allocation regions start 2 MiB-aligned: anything else is not ours. */
static inline int may_be_huge_alloc(const void *p) { return ((uintptr_t)p & (MB2 - 1)) == 0; }

/* ---- demote.c ------------------------------------------------------------ */
/* Under the lock (it is released while memory is copied, then taken again): every unit of
 * every region overlapping [a, b) becomes ordinary memory the kernel manages, with the same
 * contents, protection and fork advice; 0 or an errno value.  Callers restart their walk. */
int hl_demote_range(uintptr_t a, uintptr_t b);
/* After a successful MAP_FIXED or mremap over [a, b): what the allocations there had is gone. */
void hl_replaced_range(uintptr_t a, uintptr_t b);
/* Unit [ua, ub) of r (offsets) now: copy (or zeros with `wipe`) into ordinary memory there. */
int hl_demote_units(hl_region *r, size_t ua, size_t ub, int wipe);

/* ---- advice.c ------------------------------------------------------------ */
/* OP_MLOCK_NOFAULT: mlock's walk after a page could not be faulted in (the kernel has marked the
 * whole range locked before it faults, and faults nothing after the first failure) */
enum { OP_MADVISE, OP_PMADVISE, OP_MLOCK, OP_MUNLOCK, OP_MPROTECT, OP_MSYNC, OP_MLOCK_NOFAULT };
int hl_munmap_slow(void *addr, size_t len);                          /* 0 or -1 with errno */
int hl_range_op_slow(void *addr, size_t len, int op, int arg);       /* 0 or an errno value */
void *hl_mremap_slow(void *old, size_t oldlen, size_t newlen, int flags, void *to);
void *hl_mmap_fixed_slow(void *addr, size_t len, int prot, int flags, int fd, off_t off);
static inline int hl_maybe_managed(uintptr_t a, size_t len)
{
    if (likely(atomic_load_explicit(&hl_nreg, memory_order_relaxed) == 0))
        return 0;
    if (len == 0 || len > UINTPTR_MAX - a - KB4)
        return 0;
    return !(a + len <= atomic_load(&hl_lo) || a >= atomic_load(&hl_hi));
}

/* ---- fork.c -------------------------------------------------------------- */
void hl_fork_install(void);

/* ---- redirect.c ---------------------------------------------------------- */
#define HL_MAX_PARTS 2 /* a copy in mixed page sizes: its 1 GB part, then its 2 MB part */
typedef struct {
    char *path; /* the caller's buffer, PATH_MAX bytes: the copy, or its first part */
    int node;
    char *path2;  /* the caller's buffer, PATH_MAX bytes: the second part, when split > 0 */
    size_t split; /* the source's bytes from here on are in path2, from its start; 0: one part */
} hl_staged_copy;
int hl_index_lookup(const void *st, const char *what, hl_staged_copy *out);
void hl_index_reset_child(void);
void hl_index_fork_lock(void);
void hl_index_fork_unlock(void);
int hl_trusted(const void *st, const char *what, const char *kind); /* root-owned, no g/o write */

/* ---- filemap.c ----------------------------------------------------------- */
void *hl_mmap_file(void *addr, size_t len, int prot, int flags, int fd, off_t off);

#pragma GCC visibility pop

#endif
