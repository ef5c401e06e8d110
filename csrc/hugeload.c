/*
 * hugeload's native library.
 *
 * Exported for ctypes (ABI version 1):
 *   int    hugeload_abi_version(void);
 *   int    hugeload_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
 *   int    hugeload_chase_init(void *buf, size_t bytes, size_t stride, uint64_t seed);
 *   double hugeload_chase_ns(const void *buf, uint64_t accesses);
 *   double hugeload_seq_read_gbps(const void *buf, size_t bytes, int repeats);
 *   double hugeload_memcpy_gbps(void *dst, const void *src, size_t bytes, int repeats);
 * Interposed when preloaded: mmap mmap64 munmap madvise posix_madvise mlock
 *   munlock malloc free calloc realloc reallocarray posix_memalign
 *   aligned_alloc memalign valloc pvalloc malloc_usable_size.
 *
 * One file, built by `pip install` into the package as libhugeload.so.  It is
 * loaded two ways:
 *   - by Python through ctypes (RTLD_LOCAL: nothing is interposed), for the
 *     probe's CPUID reads and the benchmarks' timing loops;
 *   - by LD_PRELOAD into unmodified engines (llama.cpp), where it interposes
 *     mmap and friends.  It must therefore never reference Python symbols.
 *
 * ---------------------------------------------------------------------------
 * Preload behaviour (only when this library is the global definition of mmap
 * or malloc, i.e. really preloaded, and the process is not secure-execution)
 * ---------------------------------------------------------------------------
 * File mappings (mmap/mmap64 of a regular file, no MAP_FIXED):
 *   - fd on hugetlbfs ("direct"): passed through; a read-only MAP_PRIVATE is
 *     turned into MAP_SHARED (a private map would reserve a second set of
 *     pages).  The mapping is tracked so 4 KB munmaps of it succeed.
 *   - file listed in $HUGELOAD_STATE_DIR/store/redirects ("staged"): the
 *     staged hugetlbfs file is mapped MAP_SHARED read-only instead (zero
 *     copy).  Line format: "<st_dev> <st_ino> <size> <mtime_ns> <path>", path
 *     is the rest of the line.  The index is re-read when its inode, size or
 *     mtime change.  A writable MAP_PRIVATE is never redirected.
 *   - otherwise, with HUGELOAD_COPY=1 ("copy"): anonymous huge pages filled by
 *     parallel preads, then mprotect'ed to the requested protection.
 *   - otherwise the real mmap (reported page=4K fill=none).
 *   Only offset-0 maps of at least 2 MiB not longer than the file are
 *   considered, and only selected files (HUGELOAD_FILES, see below).
 * Large allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc,
 *   memalign, valloc, pvalloc, reallocarray) of >= HUGELOAD_ALLOC_THRESHOLD
 *   bytes come from anonymous huge pages, 2 MiB-aligned or more ("alloc").
 * Page size cascade for copies and allocations: 1 GB -> 2 MB -> THP
 *   (madvise(MADV_HUGEPAGE) on a 2 MiB-aligned anonymous map) -> real call.
 *   1 GB pages are tried first when
 *     HUGELOAD_PAGE_SIZE=auto: size >= 1 GiB and rounding up to whole 1 GiB
 *                              pages wastes at most 1/8 of the mapping;
 *     HUGELOAD_PAGE_SIZE=1g:   size >= 256 MiB (below that a 1 GB page wastes
 *                              most of itself: 2 MB pages are used);
 *     HUGELOAD_PAGE_SIZE=2m:   never.
 * Managed regions: munmap of any 4 KB-aligned part returns 0 and is recorded;
 *   a huge page goes back to the kernel once all of it is unmapped, the
 *   region once every byte is (bytes past the mapped length up to the huge
 *   page boundary count as unmapped from the start).  madvise, posix_madvise,
 *   mlock and munlock on managed ranges succeed without effect (hugetlb pages
 *   are never swapped), except MADV_DONTNEED/MADV_REMOVE on allocations,
 *   which zero the range as the kernel would.  Not handled: mremap, and
 *   mprotect of parts of a region (the kernel's rules apply).
 * Fallback: any failure falls back to the real call; each reason is logged
 *   once to stderr, prefixed "hugeload: ".
 *
 * Environment (set by the CLI):
 *   HUGELOAD_PAGE_SIZE       auto (default) | 1g | 2m
 *   HUGELOAD_FILES           colon-separated fnmatch globs; a glob without
 *                            '/' matches the base name, an absolute one the
 *                            whole (resolved) path, a relative one with '/'
 *                            the whole path or its tail ("models/ *.gguf"
 *                            without the space matches /srv/models/a.gguf).
 *                            Default: files of >= HUGELOAD_MIN_FILE_SIZE
 *                            mapped whole, plus any staged file.
 *   HUGELOAD_MIN_FILE_SIZE   bytes (K/M/G suffixes allowed), default 1G
 *   HUGELOAD_COPY            1 to make private huge copies of unstaged files
 *   HUGELOAD_ALLOC_THRESHOLD bytes, default 64M; 0 disables; at least 2M
 *   HUGELOAD_FILL_THREADS    preads in parallel for copies, default min(4, cpus)
 *   HUGELOAD_LOG             0: fallback warnings only (each reason once),
 *                            1: and the report on stderr (default),
 *                            2: and every region created or gone, every
 *                               fallback every time
 *   HUGELOAD_REPORT          file to append the report to (default stderr)
 *   HUGELOAD_STATE_DIR       default /run/hugeload
 *   HUGELOAD_DISABLE         1 makes the library inert
 *   HUGELOAD_FAULT           test builds only (-DHUGELOAD_FAULT_INJECTION):
 *                            comma list of 1g,2m,thp,pread,eof
 *
 * Report (at exit and on SIGUSR1 if the program has no handler of its own),
 * to HUGELOAD_REPORT (appended) or stderr; stderr gets no report when no
 * region was recorded or HUGELOAD_LOG=0.  One header line, then one line per region
 * ever created (at most 2048), space-separated key=value fields, stable order:
 *   hugeload: report pid=<pid> regions=<n> dropped=<n>
 *   hugeload: region pid=<pid> what=<name> bytes=<n> mapped=<n>
 *             page=<1G|2M|THP|4K> fill=<staged|direct|copy|alloc|none>
 *             ms=<float> addr=0x<hex> live=<0|1>
 *   (one line; the region line is wrapped here only)
 *   what: file base name, or the allocating function (malloc, calloc, ...);
 *         bytes <= ' ', '%', '=' and >= 0x7f are written as %XX.
 *   bytes: length the program asked for; mapped: length actually mapped.
 *   fill: staged = redirected to the store's hugetlbfs file, direct = the
 *         program mapped a hugetlbfs file itself, copy = private copy read
 *         with pread, alloc = anonymous memory for an allocation, none = the
 *         real mmap was used (page=4K).  An allocation that fell back to the
 *         real allocator is reported page=4K fill=alloc.
 *   ms: time spent creating the region (mapping plus copy).
 *   live: 1 if the region was still mapped when the report was written
 *         (always 0 for page=4K lines: those are not tracked).
 *   A forked child starts with no records: it reports what it creates.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#define HL_EXPORT __attribute__((visibility("default")))

HL_EXPORT int hugeload_abi_version(void) { return 1; }

/*
 * Executes CPUID for (leaf, subleaf) and stores eax, ebx, ecx, edx in out[0..3].
 * Returns 0 on success, -1 when the leaf is beyond the CPU's maximum (basic or
 * extended range) or the architecture has no CPUID; out is zeroed then.
 */
HL_EXPORT int hugeload_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    memset(out, 0, 4 * sizeof(uint32_t));
#if defined(__x86_64__) || defined(__i386__)
    unsigned int max = __get_cpuid_max(leaf & 0x80000000u, 0);
    if (max == 0 || leaf > max)
        return -1;
    unsigned int a, b, c, d;
    __cpuid_count(leaf, subleaf, a, b, c, d);
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
    return 0;
#else
    (void)leaf; (void)subleaf;
    return -1;
#endif
}

/* ======================================================================== */
/* Preload: constants, state                                                */
/* ======================================================================== */

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define KB4 ((size_t)4096)
#define MB2 ((size_t)2 << 20)
#define GB1 ((size_t)1 << 30)
#define HL_HUGETLBFS_MAGIC 0x958458f6UL
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#define HL_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#define HL_HUGE_1GB (30 << MAP_HUGE_SHIFT)
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_DONTNEED_LOCKED
#define MADV_DONTNEED_LOCKED 24
#endif

enum { PAGE_4K, PAGE_THP, PAGE_2M, PAGE_1G };
static const char *const page_name[] = {"4K", "THP", "2M", "1G"};
enum { FILL_NONE, FILL_STAGED, FILL_DIRECT, FILL_COPY, FILL_ALLOC };
static const char *const fill_name[] = {"none", "staged", "direct", "copy", "alloc"};
enum { POL_AUTO, POL_1G, POL_2M };

/* Reasons logged once each. */
enum {
    R_1G, R_2M, R_THP, R_READ, R_STAGED, R_PRIVW, R_NOTSTAGED, R_TABLE, R_RELEASE,
    R_INDEX, R_BOOKKEEP, R_ENV, R_MPROTECT,
};

static inline size_t round_up(size_t x, size_t a) { return (x + a - 1) & ~(a - 1); }
static inline size_t round_down(size_t x, size_t a) { return x & ~(a - 1); }
static inline size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static inline size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Settings: written once by the constructor before g_active is set. */
static int g_active;
static size_t g_alloc_thresh = SIZE_MAX; /* the malloc hot path's one compare */
static int g_log = 1;
static int g_copy;
static int g_policy = POL_AUTO;
static size_t g_min_file = GB1;
static int g_have_files;
static char g_files[4096];
static char g_report_path[PATH_MAX];
static char g_index_path[PATH_MAX];
static int g_thp_ok;
static int g_fill_threads = 4;
#define F_1G 1u
#define F_2M 2u
#define F_THP 4u
#define F_PREAD 8u
#define F_EOF 16u
#ifdef HUGELOAD_FAULT_INJECTION
static unsigned g_fault;
#define FAULT(f) (g_fault & (f))
#else
#define FAULT(f) 0
#endif

/* ======================================================================== */
/* Real functions and the bootstrap arena                                   */
/* ======================================================================== */

/* dlsym may call calloc/malloc before the real ones are known: those calls
 * are served from this arena, never freed. */
#define ARENA_SIZE ((size_t)256 * 1024)
static _Alignas(64) unsigned char g_arena[ARENA_SIZE];
static atomic_size_t g_arena_used;
static __thread int tl_in_dlsym __attribute__((tls_model("initial-exec")));

static void *arena_alloc(size_t n, size_t align)
{
    if (align < 16)
        align = 16;
    if (n > ARENA_SIZE || align > 4096)
        return NULL;
    size_t need = n + 16 + align;
    size_t off = atomic_fetch_add(&g_arena_used, need);
    if (off + need > ARENA_SIZE) {
        errno = ENOMEM;
        return NULL;
    }
    uintptr_t p = round_up((uintptr_t)g_arena + off + 16, align);
    ((size_t *)p)[-1] = n;
    return (void *)p;
}
static inline int in_arena(const void *p) { return (uintptr_t)p - (uintptr_t)g_arena < ARENA_SIZE; }
static inline size_t arena_size_of(const void *p) { return ((const size_t *)p)[-1]; }

static void hl_resolve(void);

static void *boot_mmap(void *a, size_t l, int p, int f, int fd, off_t o);
static int boot_munmap(void *a, size_t l);
static int boot_madvise(void *a, size_t l, int adv);
static int boot_posix_madvise(void *a, size_t l, int adv);
static int boot_mlock(const void *a, size_t l);
static int boot_munlock(const void *a, size_t l);
static void *boot_malloc(size_t n);
static void boot_free(void *p);
static void *boot_calloc(size_t n, size_t m);
static void *boot_realloc(void *p, size_t n);
static int boot_posix_memalign(void **pp, size_t a, size_t n);
static void *boot_aligned_alloc(size_t a, size_t n);
static void *boot_memalign(size_t a, size_t n);
static size_t boot_usable(void *p);

static void *(*r_mmap)(void *, size_t, int, int, int, off_t) = boot_mmap;
static int (*r_munmap)(void *, size_t) = boot_munmap;
static int (*r_madvise)(void *, size_t, int) = boot_madvise;
static int (*r_posix_madvise)(void *, size_t, int) = boot_posix_madvise;
static int (*r_mlock)(const void *, size_t) = boot_mlock;
static int (*r_munlock)(const void *, size_t) = boot_munlock;
static void *(*r_malloc)(size_t) = boot_malloc;
static void (*r_free)(void *) = boot_free;
static void *(*r_calloc)(size_t, size_t) = boot_calloc;
static void *(*r_realloc)(void *, size_t) = boot_realloc;
static int (*r_posix_memalign)(void **, size_t, size_t) = boot_posix_memalign;
static void *(*r_aligned_alloc)(size_t, size_t) = boot_aligned_alloc;
static void *(*r_memalign)(size_t, size_t) = boot_memalign;
static size_t (*r_usable)(void *) = boot_usable;

static void hl_resolve(void)
{
    static atomic_int done;
    if (atomic_load_explicit(&done, memory_order_acquire))
        return;
    tl_in_dlsym++;
    void *p;
#define RESOLVE(var, name) \
    if ((p = dlsym(RTLD_NEXT, name)) != NULL) \
        var = (__typeof__(var))p;
    RESOLVE(r_mmap, "mmap");
    RESOLVE(r_munmap, "munmap");
    RESOLVE(r_madvise, "madvise");
    RESOLVE(r_posix_madvise, "posix_madvise");
    RESOLVE(r_mlock, "mlock");
    RESOLVE(r_munlock, "munlock");
    RESOLVE(r_malloc, "malloc");
    RESOLVE(r_free, "free");
    RESOLVE(r_calloc, "calloc");
    RESOLVE(r_realloc, "realloc");
    RESOLVE(r_posix_memalign, "posix_memalign");
    RESOLVE(r_aligned_alloc, "aligned_alloc");
    RESOLVE(r_memalign, "memalign");
    RESOLVE(r_usable, "malloc_usable_size");
#undef RESOLVE
    tl_in_dlsym--;
    atomic_store_explicit(&done, 1, memory_order_release);
}

/* Until dlsym has answered, the memory calls go straight to the kernel. */
static void *boot_mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
    hl_resolve();
    if (r_mmap != boot_mmap)
        return r_mmap(a, l, p, f, fd, o);
    return (void *)syscall(SYS_mmap, a, l, p, f, fd, o);
}
static int boot_munmap(void *a, size_t l)
{
    hl_resolve();
    return r_munmap != boot_munmap ? r_munmap(a, l) : (int)syscall(SYS_munmap, a, l);
}
static int boot_madvise(void *a, size_t l, int adv)
{
    hl_resolve();
    return r_madvise != boot_madvise ? r_madvise(a, l, adv) : (int)syscall(SYS_madvise, a, l, adv);
}
static int boot_posix_madvise(void *a, size_t l, int adv)
{
    hl_resolve();
    if (r_posix_madvise != boot_posix_madvise)
        return r_posix_madvise(a, l, adv);
    if (adv == POSIX_MADV_DONTNEED)
        return 0;
    return syscall(SYS_madvise, a, l, adv) ? errno : 0;
}
static int boot_mlock(const void *a, size_t l)
{
    hl_resolve();
    return r_mlock != boot_mlock ? r_mlock(a, l) : (int)syscall(SYS_mlock, a, l);
}
static int boot_munlock(const void *a, size_t l)
{
    hl_resolve();
    return r_munlock != boot_munlock ? r_munlock(a, l) : (int)syscall(SYS_munlock, a, l);
}
static void *boot_malloc(size_t n)
{
    if (!tl_in_dlsym)
        hl_resolve();
    return r_malloc != boot_malloc ? r_malloc(n) : arena_alloc(n, 16);
}
static void boot_free(void *p)
{
    if (!tl_in_dlsym)
        hl_resolve();
    if (r_free != boot_free && !in_arena(p))
        r_free(p);
}
static void *boot_calloc(size_t n, size_t m)
{
    if (!tl_in_dlsym)
        hl_resolve();
    if (r_calloc != boot_calloc)
        return r_calloc(n, m);
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return arena_alloc(t, 16); /* static, never reused: already zero */
}
static void *boot_realloc(void *p, size_t n)
{
    if (!tl_in_dlsym)
        hl_resolve();
    if (r_realloc != boot_realloc)
        return r_realloc(p, n);
    void *q = arena_alloc(n, 16);
    if (q && p)
        memcpy(q, p, min_sz(n, arena_size_of(p)));
    return q;
}
static int boot_posix_memalign(void **pp, size_t a, size_t n)
{
    if (!tl_in_dlsym)
        hl_resolve();
    if (r_posix_memalign != boot_posix_memalign)
        return r_posix_memalign(pp, a, n);
    void *q = arena_alloc(n, a);
    if (!q)
        return ENOMEM;
    *pp = q;
    return 0;
}
static void *boot_aligned_alloc(size_t a, size_t n)
{
    if (!tl_in_dlsym)
        hl_resolve();
    return r_aligned_alloc != boot_aligned_alloc ? r_aligned_alloc(a, n) : arena_alloc(n, a);
}
static void *boot_memalign(size_t a, size_t n)
{
    if (!tl_in_dlsym)
        hl_resolve();
    return r_memalign != boot_memalign ? r_memalign(a, n) : arena_alloc(n, a);
}
static size_t boot_usable(void *p)
{
    if (!tl_in_dlsym)
        hl_resolve();
    return r_usable != boot_usable ? r_usable(p) : 0;
}

/* ======================================================================== */
/* Logging                                                                  */
/* ======================================================================== */

static atomic_ulong g_warned;

static void hl_write_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += w;
        n -= (size_t)w;
    }
}

static void hl_vlog(const char *fmt, va_list ap)
{
    int saved = errno;
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "hugeload: ");
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    hl_write_all(2, buf, (size_t)n);
    errno = saved;
}

__attribute__((format(printf, 2, 3))) static void hl_log(int level, const char *fmt, ...)
{
    if (g_log < level)
        return;
    va_list ap;
    va_start(ap, fmt);
    hl_vlog(fmt, ap);
    va_end(ap);
}

/* Logs a fallback once per reason (every time with HUGELOAD_LOG=2), even with HUGELOAD_LOG=0. */
__attribute__((format(printf, 2, 3))) static void hl_warn_once(int reason, const char *fmt, ...)
{
    unsigned long bit = 1UL << reason;
    if ((atomic_fetch_or(&g_warned, bit) & bit) && g_log < 2)
        return;
    va_list ap;
    va_start(ap, fmt);
    hl_vlog(fmt, ap);
    va_end(ap);
}

/* Reads a small decimal number from a sysfs file; -1 when unreadable. */
static long hl_read_long(const char *path)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

static long hl_pool_free(size_t page)
{
    return hl_read_long(page == GB1 ? "/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"
                                    : "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
}

/* ======================================================================== */
/* Report records                                                           */
/* ======================================================================== */

#define HL_MAX_RECORDS 2048
typedef struct {
    atomic_int ready;
    atomic_int live;
    int page, fill;
    uint64_t bytes, mapped, us;
    uintptr_t addr;
    char what[64];
} hl_rec;
static hl_rec g_rec[HL_MAX_RECORDS];
static atomic_int g_nrec;
static atomic_long g_rec_dropped;

/* Base name of path, percent-encoded so the report stays one token. */
static void hl_encode_what(const char *path, char *out, size_t outsz)
{
    const char *b = strrchr(path, '/');
    b = b && b[1] ? b + 1 : path;
    if (!*b)
        b = "?";
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *s = (const unsigned char *)b; *s && o + 4 < outsz; s++) {
        if (*s <= ' ' || *s >= 0x7f || *s == '%' || *s == '=') {
            out[o++] = '%';
            out[o++] = hex[*s >> 4];
            out[o++] = hex[*s & 15];
        } else {
            out[o++] = (char)*s;
        }
    }
    out[o] = 0;
}

static int hl_record(const char *what, uint64_t bytes, uint64_t mapped, int page, int fill, uint64_t ns,
                     uintptr_t addr, int live)
{
    int i = atomic_fetch_add(&g_nrec, 1);
    if (i >= HL_MAX_RECORDS) {
        atomic_fetch_add(&g_rec_dropped, 1);
        return -1;
    }
    hl_rec *r = &g_rec[i];
    snprintf(r->what, sizeof r->what, "%s", what);
    r->bytes = bytes;
    r->mapped = mapped;
    r->page = page;
    r->fill = fill;
    r->us = ns / 1000;
    r->addr = addr;
    atomic_store(&r->live, live);
    atomic_store_explicit(&r->ready, 1, memory_order_release);
    return i;
}

/* Async-signal-safe enough: snprintf of integers and strings, write(). */
static void hl_report(void)
{
    int fd = 2, close_it = 0;
    int n = atomic_load(&g_nrec);
    if (n > HL_MAX_RECORDS)
        n = HL_MAX_RECORDS;
    if (g_report_path[0]) {
        fd = open(g_report_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0)
            close_it = 1;
        else
            fd = 2;
    }
    if (!close_it && (g_log < 1 || n == 0))
        return;
    int pid = (int)getpid();
    char line[512];
    int len = snprintf(line, sizeof line, "hugeload: report pid=%d regions=%d dropped=%ld\n", pid, n,
                       (long)atomic_load(&g_rec_dropped));
    hl_write_all(fd, line, (size_t)len);
    for (int i = 0; i < n; i++) {
        hl_rec *r = &g_rec[i];
        if (!atomic_load_explicit(&r->ready, memory_order_acquire))
            continue;
        len = snprintf(line, sizeof line,
                       "hugeload: region pid=%d what=%s bytes=%llu mapped=%llu page=%s fill=%s ms=%llu.%03llu "
                       "addr=0x%lx live=%d\n",
                       pid, r->what, (unsigned long long)r->bytes, (unsigned long long)r->mapped,
                       page_name[r->page], fill_name[r->fill], (unsigned long long)(r->us / 1000),
                       (unsigned long long)(r->us % 1000), (unsigned long)r->addr, atomic_load(&r->live));
        if (len > (int)sizeof line - 1)
            len = (int)sizeof line - 1;
        hl_write_all(fd, line, (size_t)len);
    }
    if (close_it)
        close(fd);
}

/* ======================================================================== */
/* Region table                                                             */
/* ======================================================================== */

/* Sorted, disjoint, non-adjacent [a, b) offsets; 8 inline, then anon mmap. */
typedef struct {
    size_t a, b;
} hl_iv;
#define IV_INLINE 8
typedef struct {
    hl_iv *heap;
    size_t n, cap;
    hl_iv inl[IV_INLINE];
} hl_ivs;

typedef struct {
    int in_use;
    int fill, page, rec;
    uintptr_t base;
    size_t maplen;  /* bytes mapped, multiple of gran */
    size_t userlen; /* bytes the program asked for */
    size_t gran;    /* granule given back to the kernel: huge page size, 4 KB for THP */
    hl_ivs gone;    /* offsets the program has unmapped */
} hl_region;

#define HL_MAX_REGIONS 1024
static hl_region g_reg[HL_MAX_REGIONS];
static int g_reg_hwm;
static atomic_int g_nreg;    /* live regions: the munmap/madvise/mlock fast-path test */
static atomic_int g_nalloc;  /* live allocation regions: the free fast-path test */
static atomic_uintptr_t g_lo = UINTPTR_MAX, g_hi;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static inline hl_iv *ivs_data(hl_ivs *s) { return s->heap ? s->heap : s->inl; }

static int ivs_reserve(hl_ivs *s, size_t want)
{
    size_t cap = s->heap ? s->cap : IV_INLINE;
    if (want <= cap)
        return 0;
    size_t ncap = cap * 2;
    while (ncap < want)
        ncap *= 2;
    size_t bytes = round_up(ncap * sizeof(hl_iv), KB4);
    hl_iv *h = r_mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED)
        return -1;
    memcpy(h, ivs_data(s), s->n * sizeof(hl_iv));
    if (s->heap)
        r_munmap(s->heap, round_up(s->cap * sizeof(hl_iv), KB4));
    s->heap = h;
    s->cap = bytes / sizeof(hl_iv);
    return 0;
}

static void ivs_release(hl_ivs *s)
{
    if (s->heap)
        r_munmap(s->heap, round_up(s->cap * sizeof(hl_iv), KB4));
    s->heap = NULL;
    s->n = s->cap = 0;
}

/* Whole granules inside iv: what has been given back to the kernel. */
static inline hl_iv core(const hl_region *r, hl_iv iv)
{
    hl_iv c = {round_up(iv.a, r->gran), round_down(iv.b, r->gran)};
    if (c.b < c.a)
        c.b = c.a;
    return c;
}

static void hl_give_back(hl_region *r, size_t a, size_t b)
{
    if (r_munmap((void *)(r->base + a), b - a) != 0)
        hl_warn_once(R_RELEASE, "giving back pages at %p failed (%s)", (void *)(r->base + a), strerror(errno));
}

static void hl_bounds_recompute(void)
{
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < g_reg_hwm; i++) {
        if (!g_reg[i].in_use)
            continue;
        if (g_reg[i].base < lo)
            lo = g_reg[i].base;
        if (g_reg[i].base + g_reg[i].maplen > hi)
            hi = g_reg[i].base + g_reg[i].maplen;
    }
    atomic_store(&g_lo, lo);
    atomic_store(&g_hi, hi);
}

/* Unmaps what is still mapped of r and forgets it.  Lock held. */
static void hl_region_destroy(hl_region *r)
{
    hl_iv *v = ivs_data(&r->gone);
    size_t cur = 0;
    for (size_t i = 0; i < r->gone.n; i++) {
        hl_iv c = core(r, v[i]);
        if (c.a >= c.b)
            continue;
        if (c.a > cur)
            hl_give_back(r, cur, c.a);
        cur = max_sz(cur, c.b);
    }
    if (cur < r->maplen)
        hl_give_back(r, cur, r->maplen);
    ivs_release(&r->gone);
    if (r->rec >= 0)
        atomic_store(&g_rec[r->rec].live, 0);
    hl_log(2, "%s: region at %p gone", r->rec >= 0 ? g_rec[r->rec].what : "?", (void *)r->base);
    if (r->fill == FILL_ALLOC)
        atomic_fetch_sub(&g_nalloc, 1);
    r->in_use = 0;
    atomic_fetch_sub(&g_nreg, 1);
    while (g_reg_hwm > 0 && !g_reg[g_reg_hwm - 1].in_use)
        g_reg_hwm--;
    hl_bounds_recompute();
}

/*
 * Records that the program unmapped offsets [a, b) of r (4 KB multiples).
 * Parts that were already given back go to the real munmap (something else
 * may live there now); granules that become wholly unmapped are given back;
 * the region is destroyed once every byte is gone.  Lock held.
 */
static void hl_region_unmap(hl_region *r, size_t a, size_t b)
{
    hl_ivs *s = &r->gone;
    if (ivs_reserve(s, s->n + 1) != 0) {
        hl_warn_once(R_BOOKKEEP, "out of memory for bookkeeping: %s keeps its pages until exit",
                     r->rec >= 0 ? g_rec[r->rec].what : "?");
        return;
    }
    hl_iv *v = ivs_data(s);
    size_t n = s->n;
    for (size_t i = 0; i < n; i++) {
        hl_iv c = core(r, v[i]);
        size_t x = max_sz(c.a, a), y = min_sz(c.b, b);
        if (x < y)
            r_munmap((void *)(r->base + x), y - x);
    }
    size_t lo = 0;
    while (lo < n && v[lo].b < a)
        lo++;
    size_t hi = lo;
    while (hi < n && v[hi].a <= b)
        hi++;
    hl_iv j = {a, b};
    if (lo < hi) {
        j.a = min_sz(a, v[lo].a);
        j.b = max_sz(b, v[hi - 1].b);
    }
    hl_iv cj = core(r, j);
    size_t cur = cj.a;
    for (size_t i = lo; i < hi; i++) {
        hl_iv c = core(r, v[i]);
        if (c.a >= c.b)
            continue;
        if (c.a > cur)
            hl_give_back(r, cur, c.a);
        cur = max_sz(cur, c.b);
    }
    if (cur < cj.b)
        hl_give_back(r, cur, cj.b);
    if (lo == hi) {
        memmove(&v[lo + 1], &v[lo], (n - lo) * sizeof(hl_iv));
        v[lo] = j;
        s->n = n + 1;
    } else {
        v[lo] = j;
        memmove(&v[lo + 1], &v[hi], (n - hi) * sizeof(hl_iv));
        s->n = n - (hi - lo - 1);
    }
    if (s->n == 1 && v[0].a == 0 && v[0].b >= r->maplen)
        hl_region_destroy(r);
}

static int hl_region_add(void *p, size_t maplen, size_t userlen, size_t gran, int fill, int page,
                         const char *what, uint64_t t0)
{
    uint64_t ns = now_ns() - t0;
    pthread_mutex_lock(&g_lock);
    int slot = -1;
    for (int i = 0; i < HL_MAX_REGIONS; i++)
        if (!g_reg[i].in_use) {
            slot = i;
            break;
        }
    if (slot < 0) {
        pthread_mutex_unlock(&g_lock);
        hl_warn_once(R_TABLE, "more than %d regions: %s not placed on huge pages", HL_MAX_REGIONS, what);
        return -1;
    }
    hl_region *r = &g_reg[slot];
    memset(r, 0, sizeof *r);
    r->in_use = 1;
    r->fill = fill;
    r->page = page;
    r->base = (uintptr_t)p;
    r->maplen = maplen;
    r->userlen = userlen;
    r->gran = gran;
    r->rec = hl_record(what, userlen, maplen, page, fill, ns, (uintptr_t)p, 1);
    if (slot >= g_reg_hwm)
        g_reg_hwm = slot + 1;
    if (fill == FILL_ALLOC)
        atomic_fetch_add(&g_nalloc, 1);
    atomic_fetch_add(&g_nreg, 1);
    if (r->base < atomic_load(&g_lo))
        atomic_store(&g_lo, r->base);
    if (r->base + maplen > atomic_load(&g_hi))
        atomic_store(&g_hi, r->base + maplen);
    /* The program never mapped the padding past its length: count it unmapped. */
    size_t pad = round_up(userlen, KB4);
    if (fill != FILL_ALLOC && pad < maplen)
        hl_region_unmap(r, pad, maplen);
    pthread_mutex_unlock(&g_lock);
    hl_log(2, "%s: %zu bytes on %s pages (%s) at %p, %.3f ms", what, userlen, page_name[page], fill_name[fill], p,
           ns / 1e6);
    return 0;
}

static hl_region *hl_region_at(uintptr_t x)
{
    for (int i = 0; i < g_reg_hwm; i++) {
        hl_region *r = &g_reg[i];
        if (r->in_use && x >= r->base && x - r->base < r->maplen)
            return r;
    }
    return NULL;
}

/* Lowest region base in (x, end), or end. */
static uintptr_t hl_next_base(uintptr_t x, uintptr_t end)
{
    uintptr_t best = end;
    for (int i = 0; i < g_reg_hwm; i++) {
        hl_region *r = &g_reg[i];
        if (r->in_use && r->base > x && r->base < best)
            best = r->base;
    }
    return best;
}

static int hl_overlaps_any(uintptr_t a, uintptr_t b)
{
    for (int i = 0; i < g_reg_hwm; i++) {
        hl_region *r = &g_reg[i];
        if (r->in_use && a < r->base + r->maplen && r->base < b)
            return 1;
    }
    return 0;
}

/* ======================================================================== */
/* munmap, madvise, posix_madvise, mlock, munlock                           */
/* ======================================================================== */

static int hl_munmap_slow(void *addr, size_t len)
{
    uintptr_t a = (uintptr_t)addr;
    if ((a & (KB4 - 1)) || len == 0 || len > UINTPTR_MAX - a - KB4)
        return r_munmap(addr, len);
    uintptr_t b = round_up(a + len, KB4);
    if (b <= atomic_load(&g_lo) || a >= atomic_load(&g_hi))
        return r_munmap(addr, len);
    pthread_mutex_lock(&g_lock);
    if (!hl_overlaps_any(a, b)) {
        pthread_mutex_unlock(&g_lock);
        return r_munmap(addr, len);
    }
    int rc = 0, err = 0;
    uintptr_t cur = a;
    while (cur < b) {
        hl_region *r = hl_region_at(cur);
        if (r) {
            uintptr_t e = min_sz(b, r->base + r->maplen);
            hl_region_unmap(r, cur - r->base, e - r->base);
            cur = e;
            continue;
        }
        uintptr_t next = hl_next_base(cur, b);
        if (r_munmap((void *)cur, next - cur) != 0) {
            rc = -1;
            err = errno;
        }
        cur = next;
    }
    pthread_mutex_unlock(&g_lock);
    if (rc)
        errno = err;
    return rc;
}

enum { OP_MADVISE, OP_PMADVISE, OP_MLOCK, OP_MUNLOCK };

/* The real call for a piece we do not manage; returns 0 or an errno value. */
static int hl_real_op(int op, uintptr_t a, uintptr_t b, int adv)
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

/* A managed piece: no effect, except zeroing an allocation the program discards. */
static void hl_managed_op(hl_region *r, uintptr_t a, uintptr_t b, int op, int adv)
{
    if (op == OP_MADVISE && r->fill == FILL_ALLOC &&
        (adv == MADV_DONTNEED || adv == MADV_REMOVE || adv == MADV_DONTNEED_LOCKED))
        memset((void *)a, 0, b - a);
}

/* Splits [a, b) into managed pieces and the rest; returns 0 or the first errno. */
static int hl_advise_slow(uintptr_t a, uintptr_t b, int op, int adv)
{
    int err = 0, e;
    pthread_mutex_lock(&g_lock);
    if (!hl_overlaps_any(a, b)) {
        pthread_mutex_unlock(&g_lock);
        return hl_real_op(op, a, b, adv);
    }
    uintptr_t cur = a;
    while (cur < b) {
        hl_region *r = hl_region_at(cur);
        if (!r) {
            uintptr_t next = hl_next_base(cur, b);
            if ((e = hl_real_op(op, cur, next, adv)) && !err)
                err = e;
            cur = next;
            continue;
        }
        uintptr_t end = min_sz(b, r->base + r->maplen);
        /* Inside r: parts already given back are not ours any more. */
        hl_iv *v = ivs_data(&r->gone);
        for (size_t i = 0; i < r->gone.n && cur < end; i++) {
            hl_iv c = core(r, v[i]);
            uintptr_t ca = r->base + c.a, cb = r->base + c.b;
            if (c.a >= c.b || cb <= cur)
                continue;
            if (ca >= end)
                break;
            if (ca > cur)
                hl_managed_op(r, cur, ca, op, adv);
            if ((e = hl_real_op(op, max_sz(cur, ca), min_sz(cb, end), adv)) && !err)
                err = e;
            cur = min_sz(cb, end);
        }
        if (cur < end)
            hl_managed_op(r, cur, end, op, adv);
        cur = end;
    }
    pthread_mutex_unlock(&g_lock);
    return err;
}

HL_EXPORT int munmap(void *addr, size_t len)
{
    if (likely(atomic_load_explicit(&g_nreg, memory_order_relaxed) == 0))
        return r_munmap(addr, len);
    return hl_munmap_slow(addr, len);
}

/* Whether [addr, addr+len) may touch a managed region: sets *a and *b to its 4 KB-aligned
 * bounds.  The first test is the fast path taken by every program that has no region. */
static inline int hl_maybe_managed(void *addr, size_t len, uintptr_t *a, uintptr_t *b)
{
    *a = (uintptr_t)addr;
    if (likely(atomic_load_explicit(&g_nreg, memory_order_relaxed) == 0) || (*a & (KB4 - 1)) || len == 0 ||
        len > UINTPTR_MAX - *a - KB4)
        return 0;
    *b = round_up(*a + len, KB4);
    return !(*b <= atomic_load(&g_lo) || *a >= atomic_load(&g_hi));
}

HL_EXPORT int madvise(void *addr, size_t len, int adv)
{
    uintptr_t a, b;
    if (!hl_maybe_managed(addr, len, &a, &b))
        return r_madvise(addr, len, adv);
    int e = hl_advise_slow(a, b, OP_MADVISE, adv);
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

HL_EXPORT int posix_madvise(void *addr, size_t len, int adv)
{
    uintptr_t a, b;
    if (!hl_maybe_managed(addr, len, &a, &b))
        return r_posix_madvise(addr, len, adv);
    return hl_advise_slow(a, b, OP_PMADVISE, adv);
}

static int hl_lock_op(const void *addr, size_t len, int op)
{
    uintptr_t a = round_down((uintptr_t)addr, KB4);
    if (len == 0 || len > UINTPTR_MAX - (uintptr_t)addr - KB4)
        return op == OP_MLOCK ? r_mlock(addr, len) : r_munlock(addr, len);
    uintptr_t b = round_up((uintptr_t)addr + len, KB4);
    if (b <= atomic_load(&g_lo) || a >= atomic_load(&g_hi))
        return op == OP_MLOCK ? r_mlock(addr, len) : r_munlock(addr, len);
    int e = hl_advise_slow(a, b, op, 0);
    if (e) {
        errno = e;
        return -1;
    }
    return 0;
}

HL_EXPORT int mlock(const void *addr, size_t len)
{
    if (likely(atomic_load_explicit(&g_nreg, memory_order_relaxed) == 0))
        return r_mlock(addr, len);
    return hl_lock_op(addr, len, OP_MLOCK);
}

HL_EXPORT int munlock(const void *addr, size_t len)
{
    if (likely(atomic_load_explicit(&g_nreg, memory_order_relaxed) == 0))
        return r_munlock(addr, len);
    return hl_lock_op(addr, len, OP_MUNLOCK);
}

/* ======================================================================== */
/* Anonymous huge memory: the 1 GB -> 2 MB -> THP cascade                    */
/* ======================================================================== */

typedef struct {
    void *p;
    size_t maplen, gran;
    int page;
} hl_anon;

/* hugetlb map of size rounded to pg, base aligned to max(pg, align). */
static void *hl_map_hugetlb(size_t size, size_t align, size_t pg, int hflag)
{
    size_t maplen = round_up(size, pg);
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | hflag;
    if (align <= pg) {
        void *p = r_mmap(NULL, maplen, PROT_READ | PROT_WRITE, flags, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    /* Over-aligned: reserve address space, put the huge pages in at an aligned spot. */
    size_t span = maplen + align;
    char *res = r_mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED)
        return NULL;
    uintptr_t al = round_up((uintptr_t)res, align);
    void *p = r_mmap((void *)al, maplen, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        r_munmap(res, span);
        errno = e;
        return NULL;
    }
    if (al > (uintptr_t)res)
        r_munmap(res, al - (uintptr_t)res);
    uintptr_t tail = (uintptr_t)res + span, end = al + maplen;
    if (tail > end)
        r_munmap((void *)end, tail - end);
    return p;
}

static void *hl_map_thp(size_t size, size_t align)
{
    size_t maplen = round_up(size, MB2), a = max_sz(align, MB2), span = maplen + a;
    char *res = r_mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED)
        return NULL;
    uintptr_t al = round_up((uintptr_t)res, a), end = al + maplen, tail = (uintptr_t)res + span;
    if (al > (uintptr_t)res)
        r_munmap(res, al - (uintptr_t)res);
    if (tail > end)
        r_munmap((void *)end, tail - end);
    if (r_madvise((void *)al, maplen, MADV_HUGEPAGE) != 0) {
        int e = errno;
        r_munmap((void *)al, maplen);
        errno = e;
        return NULL;
    }
    return (void *)al;
}

static int hl_want_1g(size_t size)
{
    switch (g_policy) {
    case POL_2M:
        return 0;
    case POL_1G:
        return size >= ((size_t)256 << 20);
    default:
        if (size < GB1)
            return 0;
        size_t r = round_up(size, GB1);
        return r - size <= r / 8;
    }
}

static int hl_anon_huge(size_t size, size_t align, const char *what, hl_anon *out)
{
    if (size == 0 || size > (SIZE_MAX >> 2) || align > GB1 * 4)
        return 0;
    void *p;
    if (hl_want_1g(size)) {
        errno = ENOMEM;
        p = FAULT(F_1G) ? NULL : hl_map_hugetlb(size, align, GB1, HL_HUGE_1GB);
        if (p) {
            *out = (hl_anon){p, round_up(size, GB1), GB1, PAGE_1G};
            return 1;
        }
        int e = errno;
        hl_warn_once(R_1G, "1 GB pages unavailable (%s; pool has %ld free, %zu needed), trying 2 MB for %s (%zu bytes)",
                     strerror(e), hl_pool_free(GB1), round_up(size, GB1) / GB1, what, size);
    } else {
        hl_log(2, "%s (%zu bytes): 1 GB pages would waste too much, using 2 MB", what, size);
    }
    errno = ENOMEM;
    p = FAULT(F_2M) ? NULL : hl_map_hugetlb(size, align, MB2, HL_HUGE_2MB);
    if (p) {
        *out = (hl_anon){p, round_up(size, MB2), MB2, PAGE_2M};
        return 1;
    }
    int e = errno;
    hl_warn_once(R_2M, "2 MB pages unavailable (%s; pool has %ld free, %zu needed), trying THP for %s (%zu bytes)",
                 strerror(e), hl_pool_free(MB2), round_up(size, MB2) / MB2, what, size);
    errno = ENOTSUP;
    p = (!g_thp_ok || FAULT(F_THP)) ? NULL : hl_map_thp(size, align);
    if (p) {
        *out = (hl_anon){p, round_up(size, MB2), KB4, PAGE_THP};
        return 1;
    }
    e = errno;
    hl_warn_once(R_THP, "transparent huge pages unavailable (%s), %s stays on 4 KB pages",
                 g_thp_ok ? strerror(e) : "disabled", what);
    return 0;
}

/* ======================================================================== */
/* Large allocations                                                        */
/* ======================================================================== */

static void *hl_big_alloc(size_t n, size_t align, const char *what)
{
    int saved = errno;
    uint64_t t0 = now_ns();
    hl_anon a;
    if (!hl_anon_huge(n, align, what, &a)) {
        hl_record(what, n, n, PAGE_4K, FILL_ALLOC, 0, 0, 0);
        errno = saved;
        return NULL;
    }
    if (hl_region_add(a.p, a.maplen, n, a.gran, FILL_ALLOC, a.page, what, t0) != 0) {
        r_munmap(a.p, a.maplen);
        errno = saved;
        return NULL;
    }
    errno = saved;
    return a.p;
}

/* Our allocation regions start 2 MiB-aligned: anything else is not ours. */
static inline int maybe_ours(const void *p) { return ((uintptr_t)p & (MB2 - 1)) == 0; }

static hl_region *hl_alloc_region(const void *p)
{
    for (int i = 0; i < g_reg_hwm; i++) {
        hl_region *r = &g_reg[i];
        if (r->in_use && r->fill == FILL_ALLOC && r->base == (uintptr_t)p)
            return r;
    }
    return NULL;
}

static int hl_big_free(void *p)
{
    if (atomic_load_explicit(&g_nalloc, memory_order_relaxed) == 0)
        return 0;
    pthread_mutex_lock(&g_lock);
    hl_region *r = hl_alloc_region(p);
    if (r)
        hl_region_destroy(r);
    pthread_mutex_unlock(&g_lock);
    return r != NULL;
}

/* Capacity of our allocation at p, 0 if p is not one. */
static size_t hl_big_size(const void *p, size_t *userlen)
{
    if (!maybe_ours(p) || !p || atomic_load_explicit(&g_nalloc, memory_order_relaxed) == 0)
        return 0;
    pthread_mutex_lock(&g_lock);
    hl_region *r = hl_alloc_region(p);
    size_t cap = r ? r->maplen : 0;
    if (r && userlen)
        *userlen = r->userlen;
    pthread_mutex_unlock(&g_lock);
    return cap;
}

HL_EXPORT void *malloc(size_t n)
{
    if (unlikely(n >= g_alloc_thresh)) {
        void *p = hl_big_alloc(n, 0, "malloc");
        if (p)
            return p;
    }
    return r_malloc(n);
}

HL_EXPORT void free(void *p)
{
    if (unlikely(maybe_ours(p))) {
        if (!p || hl_big_free(p))
            return;
    }
    if (unlikely(in_arena(p)))
        return;
    r_free(p);
}

HL_EXPORT void *calloc(size_t n, size_t m)
{
    size_t t;
    if (unlikely(!__builtin_mul_overflow(n, m, &t) && t >= g_alloc_thresh)) {
        void *p = hl_big_alloc(t, 0, "calloc"); /* fresh anonymous pages are zero */
        if (p)
            return p;
    }
    return r_calloc(n, m);
}

HL_EXPORT void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (unlikely(in_arena(p))) {
        void *q = malloc(n ? n : 1);
        if (q)
            memcpy(q, p, min_sz(n, arena_size_of(p)));
        return q;
    }
    size_t ulen = 0, cap = hl_big_size(p, &ulen);
    if (cap) {
        if (n == 0) {
            free(p);
            return NULL;
        }
        if (n >= g_alloc_thresh && n <= cap) {
            pthread_mutex_lock(&g_lock);
            hl_region *r = hl_alloc_region(p);
            if (r)
                r->userlen = n;
            pthread_mutex_unlock(&g_lock);
            return p;
        }
        void *q = malloc(n);
        if (!q)
            return NULL;
        memcpy(q, p, min_sz(n, cap));
        free(p);
        return q;
    }
    if (unlikely(n >= g_alloc_thresh)) {
        void *q = hl_big_alloc(n, 0, "realloc");
        if (q) {
            memcpy(q, p, min_sz(n, r_usable(p)));
            r_free(p);
            return q;
        }
    }
    return r_realloc(p, n);
}

HL_EXPORT void *reallocarray(void *p, size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, t);
}

static inline int pow2(size_t a) { return a && !(a & (a - 1)); }

HL_EXPORT int posix_memalign(void **pp, size_t align, size_t n)
{
    if (unlikely(n >= g_alloc_thresh) && pow2(align) && align % sizeof(void *) == 0) {
        void *p = hl_big_alloc(n, align, "posix_memalign");
        if (p) {
            *pp = p;
            return 0;
        }
    }
    return r_posix_memalign(pp, align, n);
}

HL_EXPORT void *aligned_alloc(size_t align, size_t n)
{
    if (unlikely(n >= g_alloc_thresh) && pow2(align)) {
        void *p = hl_big_alloc(n, align, "aligned_alloc");
        if (p)
            return p;
    }
    return r_aligned_alloc(align, n);
}

static void *hl_memalign_as(size_t align, size_t n, const char *what)
{
    if (unlikely(n >= g_alloc_thresh) && pow2(align)) {
        void *p = hl_big_alloc(n, align, what);
        if (p)
            return p;
    }
    return r_memalign(align, n);
}

HL_EXPORT void *memalign(size_t align, size_t n) { return hl_memalign_as(align, n, "memalign"); }

HL_EXPORT void *valloc(size_t n) { return hl_memalign_as(KB4, n, "valloc"); }

HL_EXPORT void *pvalloc(size_t n)
{
    if (n > SIZE_MAX - KB4) {
        errno = ENOMEM;
        return NULL;
    }
    return hl_memalign_as(KB4, n ? round_up(n, KB4) : KB4, "pvalloc");
}

HL_EXPORT size_t malloc_usable_size(void *p)
{
    if (!p)
        return 0;
    if (unlikely(in_arena(p)))
        return arena_size_of(p);
    size_t cap = hl_big_size(p, NULL);
    return cap ? cap : r_usable(p);
}

/* ======================================================================== */
/* The staged-file index                                                    */
/* ======================================================================== */

typedef struct {
    uint64_t dev, ino, size, mtime;
    size_t path_off;
} hl_redir;

static struct {
    int loaded;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim;
    char *text;
    size_t text_map;
    hl_redir *ent;
    size_t n, ent_map;
} g_idx;
static pthread_mutex_t g_idx_lock = PTHREAD_MUTEX_INITIALIZER;

static void hl_index_clear(void)
{
    if (g_idx.text)
        r_munmap(g_idx.text, g_idx.text_map);
    if (g_idx.ent)
        r_munmap(g_idx.ent, g_idx.ent_map);
    memset(&g_idx, 0, sizeof g_idx);
}

static int parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    if (*p < '0' || *p > '9')
        return -1;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    *out = v;
    *s = p;
    return 0;
}

/* Reads the index into anonymous memory (never malloc: we may be inside it). */
static void hl_index_load(void)
{
    hl_index_clear();
    int fd = open(g_index_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size > (64 << 20)) {
        close(fd);
        hl_warn_once(R_INDEX, "redirect index %s unreadable or too large", g_index_path);
        return;
    }
    size_t size = (size_t)st.st_size, tmap = round_up(size + 1, KB4);
    char *text = r_mmap(NULL, tmap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (text == MAP_FAILED) {
        close(fd);
        return;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    text[got] = 0;
    size_t lines = 1;
    for (size_t i = 0; i < got; i++)
        lines += text[i] == '\n';
    size_t emap = round_up(lines * sizeof(hl_redir), KB4);
    hl_redir *ent = r_mmap(NULL, emap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ent == MAP_FAILED) {
        r_munmap(text, tmap);
        return;
    }
    size_t n = 0;
    char *line = text;
    while (line < text + got) {
        char *nl = memchr(line, '\n', (size_t)(text + got - line));
        char *end = nl ? nl : text + got;
        *end = 0;
        if (end > line && end[-1] == '\r')
            end[-1] = 0;
        const char *p = line;
        hl_redir e;
        if (*p != '#' && *p && parse_u64(&p, &e.dev) == 0 && *p++ == ' ' && parse_u64(&p, &e.ino) == 0 &&
            *p++ == ' ' && parse_u64(&p, &e.size) == 0 && *p++ == ' ' && parse_u64(&p, &e.mtime) == 0 &&
            *p++ == ' ' && *p) {
            e.path_off = (size_t)(p - text);
            ent[n++] = e;
        } else if (*line && *line != '#') {
            hl_warn_once(R_INDEX, "malformed line in redirect index %s ignored", g_index_path);
        }
        line = end + 1;
    }
    g_idx.loaded = 1;
    g_idx.dev = st.st_dev;
    g_idx.ino = st.st_ino;
    g_idx.size = st.st_size;
    g_idx.mtim = st.st_mtim;
    g_idx.text = text;
    g_idx.text_map = tmap;
    g_idx.ent = ent;
    g_idx.ent_map = emap;
    g_idx.n = n;
    hl_log(2, "redirect index %s: %zu entries", g_index_path, n);
}

/* Copies the staged path for st into out; 1 if found. */
static int hl_index_lookup(const struct stat *st, char *out, size_t outsz)
{
    struct stat ist;
    int found = 0;
    pthread_mutex_lock(&g_idx_lock);
    if (stat(g_index_path, &ist) != 0) {
        if (g_idx.loaded)
            hl_index_clear();
    } else if (!g_idx.loaded || ist.st_ino != g_idx.ino || ist.st_dev != g_idx.dev || ist.st_size != g_idx.size ||
               ist.st_mtim.tv_sec != g_idx.mtim.tv_sec || ist.st_mtim.tv_nsec != g_idx.mtim.tv_nsec) {
        hl_index_load();
    }
    uint64_t mt = (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec;
    for (size_t i = 0; i < g_idx.n; i++) {
        hl_redir *e = &g_idx.ent[i];
        if (e->dev == (uint64_t)st->st_dev && e->ino == (uint64_t)st->st_ino && e->size == (uint64_t)st->st_size &&
            e->mtime == mt) {
            snprintf(out, outsz, "%s", g_idx.text + e->path_off);
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&g_idx_lock);
    return found;
}

/* ======================================================================== */
/* File mappings                                                            */
/* ======================================================================== */

static int hl_selected(const char *path, const struct stat *st, size_t len, int staged)
{
    if (!g_have_files)
        return staged || ((size_t)st->st_size >= g_min_file && len >= (size_t)st->st_size);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *s = g_files;
    char pat[PATH_MAX];
    while (*s) {
        const char *c = strchr(s, ':');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        if (n > 0 && n + 2 < sizeof pat) {
            memcpy(pat + 2, s, n);
            pat[n + 2] = 0;
            char *g = pat + 2;
            if (!memchr(g, '/', n)) {
                if (fnmatch(g, base, 0) == 0)
                    return 1;
            } else if (fnmatch(g, path, 0) == 0) {
                return 1;
            } else if (g[0] != '/') {
                pat[0] = '*', pat[1] = '/'; /* relative: any directory above */
                if (fnmatch(pat, path, 0) == 0)
                    return 1;
            }
        }
        s += n + (c ? 1 : 0);
    }
    return 0;
}

static void *hl_map_staged(size_t len, int prot, int flags, const struct stat *st, const char *staged,
                           const char *what)
{
    uint64_t t0 = now_ns();
    int sfd = open(staged, O_RDONLY | O_CLOEXEC);
    if (sfd < 0) {
        hl_warn_once(R_STAGED, "staged copy %s of %s cannot be opened (%s): not redirected", staged, what,
                     strerror(errno));
        return NULL;
    }
    struct statfs sfs;
    struct stat sst;
    if (fstatfs(sfd, &sfs) != 0 || (unsigned long)sfs.f_type != HL_HUGETLBFS_MAGIC || fstat(sfd, &sst) != 0) {
        close(sfd);
        hl_warn_once(R_STAGED, "staged copy %s of %s is not on hugetlbfs: not redirected", staged, what);
        return NULL;
    }
    size_t gran = (size_t)sfs.f_bsize;
    size_t maplen = round_up(len, gran);
    if ((size_t)sst.st_size < maplen || sst.st_size < st->st_size) {
        close(sfd);
        hl_warn_once(R_STAGED, "staged copy %s of %s is too small (%lld < %zu bytes): not redirected", staged, what,
                     (long long)sst.st_size, maplen);
        return NULL;
    }
    void *p = r_mmap(NULL, maplen, prot & (PROT_READ | PROT_EXEC),
                     MAP_SHARED | (flags & (MAP_POPULATE | MAP_LOCKED | MAP_NONBLOCK)), sfd, 0);
    int e = errno;
    close(sfd);
    if (p == MAP_FAILED) {
        hl_warn_once(R_STAGED, "mapping staged copy %s of %s failed (%s): not redirected", staged, what,
                     strerror(e));
        return NULL;
    }
    if (hl_region_add(p, maplen, len, gran, FILL_STAGED, gran == GB1 ? PAGE_1G : PAGE_2M, what, t0) != 0) {
        r_munmap(p, maplen);
        return NULL;
    }
    return p;
}

typedef struct {
    int fd;
    char *dst;
    size_t total;
    atomic_size_t next;
    atomic_int err;
} hl_fill_job;
#define FILL_CHUNK ((size_t)32 << 20)

static void *hl_fill_worker(void *arg)
{
    hl_fill_job *j = arg;
    for (;;) {
        size_t off = atomic_fetch_add(&j->next, FILL_CHUNK);
        if (off >= j->total || atomic_load(&j->err))
            break;
        size_t n = min_sz(FILL_CHUNK, j->total - off), done = 0;
        while (done < n) {
            ssize_t r;
            if (FAULT(F_PREAD | F_EOF) && off + done >= j->total / 2) {
                r = FAULT(F_PREAD) ? -1 : 0;
                errno = EIO;
            } else {
                r = pread(j->fd, j->dst + off + done, n - done, (off_t)(off + done));
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                int e = r < 0 ? errno : ENODATA; /* 0 before the end: the file shrank */
                int zero = 0;
                atomic_compare_exchange_strong(&j->err, &zero, e);
                return NULL;
            }
            done += (size_t)r;
        }
    }
    return NULL;
}

/* Fills dst with the file's first total bytes using a few threads; 0 or an errno. */
static int hl_fill(int fd, void *dst, size_t total)
{
    hl_fill_job j = {.fd = fd, .dst = dst, .total = total};
    atomic_init(&j.next, 0);
    atomic_init(&j.err, 0);
    size_t chunks = (total + FILL_CHUNK - 1) / FILL_CHUNK;
    int nt = g_fill_threads;
    if ((size_t)nt > chunks)
        nt = (int)chunks;
    pthread_t th[16];
    int started = 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the program's handlers never run on our threads */
    for (int i = 1; i < nt && i < 16; i++)
        if (pthread_create(&th[started], NULL, hl_fill_worker, &j) == 0)
            started++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    hl_fill_worker(&j);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    return atomic_load(&j.err);
}

static void *hl_map_copy(size_t len, int prot, int fd, const struct stat *st, const char *what)
{
    uint64_t t0 = now_ns();
    hl_anon a;
    if (!hl_anon_huge(len, 0, what, &a))
        return NULL;
    int e = hl_fill(fd, a.p, min_sz(len, (size_t)st->st_size));
    if (e) {
        r_munmap(a.p, a.maplen);
        hl_warn_once(R_READ, "reading %s for its huge page copy failed (%s): using the real mmap", what,
                     e == ENODATA ? "file shorter than its size" : strerror(e));
        return NULL;
    }
    if (prot != (PROT_READ | PROT_WRITE) && mprotect(a.p, a.maplen, prot) != 0)
        hl_warn_once(R_MPROTECT, "mprotect of the copy of %s failed (%s): left writable", what, strerror(errno));
    if (hl_region_add(a.p, a.maplen, len, a.gran, FILL_COPY, a.page, what, t0) != 0) {
        r_munmap(a.p, a.maplen);
        return NULL;
    }
    return a.p;
}

/* The program maps a hugetlbfs file itself: share instead of a private second set, and track it. */
static void *hl_map_hugetlbfs(size_t len, int prot, int flags, int fd, off_t off, const struct statfs *sfs)
{
    uint64_t t0 = now_ns();
    int nflags = flags;
    if ((flags & MAP_TYPE) == MAP_PRIVATE && !(prot & PROT_WRITE))
        nflags = (flags & ~MAP_TYPE) | MAP_SHARED;
    void *p = r_mmap(NULL, len, prot, nflags, fd, off);
    if (p == MAP_FAILED && nflags != flags)
        p = r_mmap(NULL, len, prot, flags, fd, off);
    if (p == MAP_FAILED)
        return p;
    size_t gran = (size_t)sfs->f_bsize;
    if (gran < MB2 || !pow2(gran) || ((uintptr_t)p & (gran - 1)))
        return p;
    char path[PATH_MAX], what[64];
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n > 0 ? n : 0] = 0;
    hl_encode_what(path, what, sizeof what);
    hl_region_add(p, round_up(len, gran), len, gran, FILL_DIRECT, gran == GB1 ? PAGE_1G : PAGE_2M, what, t0);
    return p;
}

static void *hl_mmap_file(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    int saved = errno;
    struct stat st;
    struct statfs sfs;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto real;
    if (fstatfs(fd, &sfs) == 0 && (unsigned long)sfs.f_type == HL_HUGETLBFS_MAGIC) {
        void *p = hl_map_hugetlbfs(len, prot, flags, fd, off, &sfs);
        if (p != MAP_FAILED)
            errno = saved;
        return p;
    }
    int type = flags & MAP_TYPE, writable = prot & PROT_WRITE;
    if (off != 0 || len < MB2 || len > round_up((size_t)st.st_size, KB4) ||
        (type != MAP_SHARED && type != MAP_PRIVATE) ||
        (flags & ~(MAP_TYPE | MAP_POPULATE | MAP_NORESERVE | MAP_LOCKED | MAP_NONBLOCK)) ||
        (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) || (type == MAP_SHARED && writable))
        goto real;
    char path[PATH_MAX], staged[PATH_MAX], what[64], link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n > 0 ? n : 0] = 0;
    int found = hl_index_lookup(&st, staged, sizeof staged);
    if (!hl_selected(path, &st, len, found))
        goto real;
    hl_encode_what(path, what, sizeof what);
    void *p = NULL;
    if (found) {
        if (type == MAP_PRIVATE && writable)
            hl_warn_once(R_PRIVW, "%s is mapped writable and private: not redirected to its staged copy", what);
        else
            p = hl_map_staged(len, prot, flags, &st, staged, what);
    }
    if (!p && g_copy)
        p = hl_map_copy(len, prot, fd, &st, what);
    if (!p && !found && !g_copy)
        hl_warn_once(R_NOTSTAGED, "%s is not staged and HUGELOAD_COPY is off: left on 4 KB pages", what);
    if (p) {
        errno = saved;
        return p;
    }
    errno = saved;
    p = r_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED)
        hl_record(what, len, len, PAGE_4K, FILL_NONE, 0, (uintptr_t)p, 0);
    return p;
real:
    errno = saved;
    return r_mmap(addr, len, prot, flags, fd, off);
}

HL_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (likely(!g_active || fd < 0 || (flags & (MAP_ANONYMOUS | MAP_FIXED | MAP_FIXED_NOREPLACE))))
        return r_mmap(addr, len, prot, flags, fd, off);
    return hl_mmap_file(addr, len, prot, flags, fd, off);
}

HL_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

/* ======================================================================== */
/* Initialisation                                                           */
/* ======================================================================== */

static size_t parse_size(const char *name, size_t dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (errno || end == s || *end || *s == '-' || (shift && v > (SIZE_MAX >> shift))) {
        hl_warn_once(R_ENV, "%s=%s is not a size: using %zu", name, s, dflt);
        return dflt;
    }
    return (size_t)(v << shift);
}

static int env_true(const char *name)
{
    const char *s = getenv(name);
    return s && (!strcmp(s, "1") || !strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcasecmp(s, "on"));
}

/* True when the process-wide mmap or malloc is ours: we were preloaded, not dlopen'ed. */
static int hl_is_preloaded(void)
{
    Dl_info self, glob;
    if (!dladdr((void *)hl_is_preloaded, &self))
        return 0;
    const char *names[] = {"mmap", "malloc"};
    for (int i = 0; i < 2; i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        if (sym && dladdr(sym, &glob) && glob.dli_fbase == self.dli_fbase)
            return 1;
    }
    return 0;
}

static void hl_sigusr1(int sig)
{
    (void)sig;
    int e = errno;
    hl_report();
    errno = e;
}

static void hl_atfork_prepare(void)
{
    pthread_mutex_lock(&g_idx_lock);
    pthread_mutex_lock(&g_lock);
}
static void hl_atfork_parent(void)
{
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_idx_lock);
}
/* The child reports only what it creates itself; inherited regions stay managed. */
static void hl_atfork_child(void)
{
    pthread_mutex_init(&g_lock, NULL);
    pthread_mutex_init(&g_idx_lock, NULL);
    for (int i = 0; i < g_reg_hwm; i++)
        g_reg[i].rec = -1;
    for (int i = 0; i < HL_MAX_RECORDS; i++)
        atomic_store(&g_rec[i].ready, 0);
    atomic_store(&g_nrec, 0);
    atomic_store(&g_rec_dropped, 0);
}

__attribute__((constructor)) static void hl_ctor(void)
{
    if (getauxval(AT_SECURE))
        return;
    const char *dis = getenv("HUGELOAD_DISABLE");
    if (dis && *dis && strcmp(dis, "0"))
        return;
    hl_resolve();
    if (!hl_is_preloaded())
        return;

    const char *s = getenv("HUGELOAD_LOG");
    if (s && *s)
        g_log = atoi(s);
    s = getenv("HUGELOAD_PAGE_SIZE");
    if (s && *s) {
        if (!strcasecmp(s, "1g") || !strcasecmp(s, "1gb") || !strcasecmp(s, "1G"))
            g_policy = POL_1G;
        else if (!strcasecmp(s, "2m") || !strcasecmp(s, "2mb"))
            g_policy = POL_2M;
        else if (strcasecmp(s, "auto"))
            hl_warn_once(R_ENV, "HUGELOAD_PAGE_SIZE=%s unknown: using auto", s);
    }
    s = getenv("HUGELOAD_FILES");
    if (s && *s) {
        if (strlen(s) >= sizeof g_files)
            hl_warn_once(R_ENV, "HUGELOAD_FILES is too long: only its first %zu bytes are used", sizeof g_files - 1);
        snprintf(g_files, sizeof g_files, "%s", s);
        g_have_files = 1;
    }
    g_min_file = parse_size("HUGELOAD_MIN_FILE_SIZE", GB1);
    g_copy = env_true("HUGELOAD_COPY");
    size_t th = parse_size("HUGELOAD_ALLOC_THRESHOLD", (size_t)64 << 20);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    g_fill_threads = cpus > 0 && cpus < 4 ? (int)cpus : 4;
    s = getenv("HUGELOAD_FILL_THREADS");
    if (s && atoi(s) > 0)
        g_fill_threads = atoi(s) > 16 ? 16 : atoi(s);
    s = getenv("HUGELOAD_REPORT");
    if (s && *s)
        snprintf(g_report_path, sizeof g_report_path, "%s", s);
    s = getenv("HUGELOAD_STATE_DIR");
    snprintf(g_index_path, sizeof g_index_path, "%s/store/redirects", s && *s ? s : "/run/hugeload");

    char buf[128];
    int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        buf[n > 0 ? n : 0] = 0;
        g_thp_ok = !strstr(buf, "[never]") && n > 0;
    }
#ifdef HUGELOAD_FAULT_INJECTION
    s = getenv("HUGELOAD_FAULT");
    if (s) {
        g_fault |= strstr(s, "1g") ? F_1G : 0;
        g_fault |= strstr(s, "2m") ? F_2M : 0;
        g_fault |= strstr(s, "thp") ? F_THP : 0;
        g_fault |= strstr(s, "pread") ? F_PREAD : 0;
        g_fault |= strstr(s, "eof") ? F_EOF : 0;
    }
#endif
    pthread_atfork(hl_atfork_prepare, hl_atfork_parent, hl_atfork_child);
    struct sigaction old;
    if (sigaction(SIGUSR1, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = hl_sigusr1;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
    }
    g_active = 1;
    if (th && th < MB2) {
        hl_warn_once(R_ENV, "HUGELOAD_ALLOC_THRESHOLD=%zu is below one 2 MB page: using 2 MiB", th);
        th = MB2;
    }
    g_alloc_thresh = th ? th : SIZE_MAX;
    hl_log(2, "active: page size %s, copy %s, allocation threshold %zu, index %s",
           g_policy == POL_1G ? "1g" : g_policy == POL_2M ? "2m" : "auto", g_copy ? "on" : "off", th, g_index_path);
}

__attribute__((destructor)) static void hl_dtor(void)
{
    if (g_active)
        hl_report();
}

/* ======================================================================== */
/* Benchmark kernels (called by the benchmark command through ctypes)       */
/* ======================================================================== */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * Builds one random cycle through the slots buf + i*stride, i < bytes/stride
 * (Sattolo's shuffle): each slot's first word points to the next slot.
 * stride must be a multiple of 8 and buf 8-aligned.  0, or -1 on bad input.
 */
HL_EXPORT int hugeload_chase_init(void *buf, size_t bytes, size_t stride, uint64_t seed)
{
    if (!buf || stride < sizeof(void *) || stride % sizeof(void *) || (uintptr_t)buf % sizeof(void *))
        return -1;
    size_t n = bytes / stride;
    if (n < 2)
        return -1;
    char *b = buf;
#define SLOT(i) (*(size_t *)(b + (i) * stride))
    for (size_t i = 0; i < n; i++)
        SLOT(i) = i;
    uint64_t s = seed;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(((unsigned __int128)splitmix64(&s) * i) >> 64); /* j in [0, i) */
        size_t t = SLOT(i);
        SLOT(i) = SLOT(j);
        SLOT(j) = t;
    }
    for (size_t i = 0; i < n; i++)
        *(void **)(b + i * stride) = b + SLOT(i) * stride;
#undef SLOT
    return 0;
}

static void *volatile g_sink_ptr;
static volatile uint64_t g_sink;

/* Follows the chain from buf for `accesses` dependent loads; ns per access (-1 on bad input). */
HL_EXPORT double hugeload_chase_ns(const void *buf, uint64_t accesses)
{
    if (!buf || !accesses)
        return -1.0;
    void *const *p = buf;
    uint64_t k = accesses;
    uint64_t t0 = now_ns();
    while (k >= 8) {
        p = *p; p = *p; p = *p; p = *p;
        p = *p; p = *p; p = *p; p = *p;
        k -= 8;
    }
    while (k--)
        p = *p;
    uint64_t t1 = now_ns();
    g_sink_ptr = (void *)p;
    return (double)(t1 - t0) / (double)accesses;
}

/* Best of `repeats` passes reading bytes (rounded down to 64) from buf; GB/s (1e9 bytes), -1 on bad input. */
HL_EXPORT double hugeload_seq_read_gbps(const void *buf, size_t bytes, int repeats)
{
    size_t lines = bytes / 64;
    if (!buf || lines == 0 || repeats < 1 || (uintptr_t)buf % 8)
        return -1.0;
    const uint64_t *q = buf;
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < lines; i++) {
            const uint64_t *l = q + i * 8;
            s0 += l[0]; s1 += l[1]; s2 += l[2]; s3 += l[3];
            s4 += l[4]; s5 += l[5]; s6 += l[6]; s7 += l[7];
        }
        uint64_t t1 = now_ns();
        g_sink += s0 ^ s1 ^ s2 ^ s3 ^ s4 ^ s5 ^ s6 ^ s7;
        double gbps = (double)(lines * 64) / (double)(t1 - t0 ? t1 - t0 : 1);
        if (gbps > best)
            best = gbps;
    }
    return best;
}

/* Best of `repeats` memcpy(dst, src, bytes); GB/s of bytes copied, -1 on bad input. */
HL_EXPORT double hugeload_memcpy_gbps(void *dst, const void *src, size_t bytes, int repeats)
{
    if (!dst || !src || !bytes || repeats < 1)
        return -1.0;
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        uint64_t t0 = now_ns();
        memcpy(dst, src, bytes);
        __asm__ volatile("" : : "r"(dst) : "memory");
        uint64_t t1 = now_ns();
        double gbps = (double)bytes / (double)(t1 - t0 ? t1 - t0 : 1);
        if (gbps > best)
            best = gbps;
    }
    return best;
}
