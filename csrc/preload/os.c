/*
 * os.c: the real functions, the OS primitives and the library's own memory.
 *
 * r_* point at the next definition (glibc's) once hl_resolve() has asked
 * dlsym(RTLD_NEXT); before that, the boot_* versions call the kernel with
 * syscall() and serve dlsym's own calloc/malloc from a static arena that is
 * never freed.  hl_os_* are the only way the rest of the library reaches the
 * kernel (tests/native/test_regions.c fakes the ones regions.c uses); they go
 * through r_* so they never recurse into our own overrides.
 *
 * The library's own memory (hl_mem_*: interval sets, per-unit state, log
 * buffers, path scratch) comes from one PROT_NONE range reserved at start-up
 * (64 MiB of address space, no memory), committed page by page: it never
 * lands in a hole the program has just unmapped, where the program may next
 * put a MAP_FIXED_NOREPLACE map or grow a map in place.  Beyond it, ordinary
 * anonymous maps.
 */
#include "hl.h"

#include <dlfcn.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif
#ifndef MFD_HUGETLB
#define MFD_CLOEXEC 1u
#define MFD_HUGETLB 4u
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif

_Alignas(64) unsigned char hl_arena[ARENA_SIZE];
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
    uintptr_t p = round_up((uintptr_t)hl_arena + off + 16, align);
    ((size_t *)p)[-1] = n;
    return (void *)p;
}

static void *boot_mmap(void *a, size_t l, int p, int f, int fd, off_t o);
static int boot_munmap(void *a, size_t l);
static void *boot_mremap(void *a, size_t l, size_t n, int f, ...);
static int boot_mprotect(void *a, size_t l, int p);
static int boot_madvise(void *a, size_t l, int adv);
static int boot_posix_madvise(void *a, size_t l, int adv);
static int boot_mlock(const void *a, size_t l);
static int boot_munlock(const void *a, size_t l);
static int boot_msync(void *a, size_t l, int f);
static void *boot_malloc(size_t n);
static void boot_free(void *p);
static void *boot_calloc(size_t n, size_t m);
static void *boot_realloc(void *p, size_t n);
static int boot_posix_memalign(void **pp, size_t a, size_t n);
static void *boot_aligned_alloc(size_t a, size_t n);
static void *boot_memalign(size_t a, size_t n);
static size_t boot_usable(void *p);

void *(*r_mmap)(void *, size_t, int, int, int, off_t) = boot_mmap;
int (*r_munmap)(void *, size_t) = boot_munmap;
void *(*r_mremap)(void *, size_t, size_t, int, ...) = boot_mremap;
int (*r_mprotect)(void *, size_t, int) = boot_mprotect;
int (*r_madvise)(void *, size_t, int) = boot_madvise;
int (*r_posix_madvise)(void *, size_t, int) = boot_posix_madvise;
int (*r_mlock)(const void *, size_t) = boot_mlock;
int (*r_munlock)(const void *, size_t) = boot_munlock;
int (*r_msync)(void *, size_t, int) = boot_msync;
void *(*r_malloc)(size_t) = boot_malloc;
void (*r_free)(void *) = boot_free;
void *(*r_calloc)(size_t, size_t) = boot_calloc;
void *(*r_realloc)(void *, size_t) = boot_realloc;
int (*r_posix_memalign)(void **, size_t, size_t) = boot_posix_memalign;
void *(*r_aligned_alloc)(size_t, size_t) = boot_aligned_alloc;
void *(*r_memalign)(size_t, size_t) = boot_memalign;
size_t (*r_usable)(void *) = boot_usable;
void hl_resolve(void)
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
    RESOLVE(r_mremap, "mremap");
    RESOLVE(r_mprotect, "mprotect");
    RESOLVE(r_madvise, "madvise");
    RESOLVE(r_posix_madvise, "posix_madvise");
    RESOLVE(r_mlock, "mlock");
    RESOLVE(r_munlock, "munlock");
    RESOLVE(r_msync, "msync");
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
static void *boot_mremap(void *a, size_t l, size_t n, int f, ...)
{
    va_list ap;
    va_start(ap, f);
    void *to = (f & MREMAP_FIXED) ? va_arg(ap, void *) : NULL;
    va_end(ap);
    hl_resolve();
    if (r_mremap != boot_mremap)
        return r_mremap(a, l, n, f, to);
    return (void *)syscall(SYS_mremap, a, l, n, f, to);
}
static int boot_mprotect(void *a, size_t l, int p)
{
    hl_resolve();
    return r_mprotect != boot_mprotect ? r_mprotect(a, l, p) : (int)syscall(SYS_mprotect, a, l, p);
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
static int boot_msync(void *a, size_t l, int f)
{
    hl_resolve();
    return r_msync != boot_msync ? r_msync(a, l, f) : (int)syscall(SYS_msync, a, l, f);
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

/* ---- primitives ------------------------------------------------------- */

int hl_os_unmap(uintptr_t addr, size_t len) { return r_munmap((void *)addr, len); }

int hl_os_punch(uintptr_t addr, size_t len) { return r_madvise((void *)addr, len, MADV_REMOVE); }

int hl_os_release(uintptr_t addr, size_t len, int punch)
{
    /* A punch that fails leaves the pages in the file until its last map goes: logged, not lost. */
    if (punch && r_madvise((void *)addr, len, MADV_REMOVE) != 0)
        hl_warn_once(R_RELEASE, "punching pages at %p out of their memfd failed (%s): they return when the map goes",
                     (void *)addr, strerror(errno));
    return r_munmap((void *)addr, len);
}

void *hl_os_map_anon(void *at, size_t len, int prot, int flags)
{
    void *p = r_mmap(at, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void *hl_os_map_fd(void *at, size_t len, int prot, int flags, int fd, off_t off)
{
    void *p = r_mmap(at, len, prot, flags, fd, off);
    return p == MAP_FAILED ? NULL : p;
}

void *hl_os_remap(void *old, size_t oldlen, size_t newlen, int flags, void *to)
{
    void *p = r_mremap(old, oldlen, newlen, flags, to);
    return p == MAP_FAILED ? NULL : p;
}

int hl_os_protect(uintptr_t addr, size_t len, int prot) { return r_mprotect((void *)addr, len, prot); }

int hl_os_advise(uintptr_t addr, size_t len, int adv) { return r_madvise((void *)addr, len, adv) ? errno : 0; }

int hl_os_lock(uintptr_t addr, size_t len, int lock)
{
    return (lock ? r_mlock((void *)addr, len) : r_munlock((void *)addr, len)) ? errno : 0;
}

int hl_os_lock_nofault(uintptr_t addr, size_t len)
{
    return syscall(SYS_mlock2, addr, len, 1 /* MLOCK_ONFAULT */) ? errno : 0;
}

int hl_os_hole(uintptr_t addr, size_t len)
{
    unsigned char v[128]; /* mincore fails with ENOMEM on an unmapped page and changes nothing */
    for (uintptr_t a = round_down(addr, KB4), e = addr + len; a < e; a += sizeof v * KB4) {
        size_t n = min_sz(e - a, sizeof v * KB4);
        if (mincore((void *)a, n, v) != 0 && errno == ENOMEM)
            return 1;
    }
    return 0;
}

int hl_os_sync(uintptr_t addr, size_t len, int flags) { return r_msync((void *)addr, len, flags) ? errno : 0; }

int hl_os_mapped(uintptr_t addr)
{
    unsigned char v;
    return mincore((void *)round_down(addr, KB4), KB4, &v) == 0;
}

void hl_os_name(void *p, size_t len, const char *name)
{
    if (prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)p, len, (unsigned long)name) != 0)
        hl_log(2, "naming %s's memory failed (%s)", name, strerror(errno));
}

int hl_os_memfd_huge(const char *name, size_t len, int shift)
{
    int fd = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_HUGETLB | ((unsigned)shift << MAP_HUGE_SHIFT));
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)len) != 0) {
        hl_os_close(fd);
        return -1;
    }
    return fd;
}

int hl_os_open_ro(const char *path) { return open(path, O_RDONLY | O_CLOEXEC); }

int hl_os_open(const char *path, int flags, int mode) { return open(path, flags, mode); }

int hl_os_getpid(void) { return (int)getpid(); }

unsigned hl_os_geteuid(void) { return (unsigned)geteuid(); }

int hl_os_reopen_ro(int fd)
{
    char link[40];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    return open(link, O_RDONLY | O_CLOEXEC);
}

int hl_os_accmode(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : (fl & O_PATH) ? O_PATH : (fl & O_ACCMODE);
}

int hl_os_close(int fd)
{
    int e = errno, rc = close(fd);
    errno = e;
    return rc;
}

int hl_os_fstat(int fd, void *st) { return fstat(fd, st); }

int hl_os_stat(const char *path, void *st) { return stat(path, st); }

long hl_os_fs_type(int fd, size_t *block)
{
    struct statfs sfs;
    if (fstatfs(fd, &sfs) != 0)
        return -1;
    if (block)
        *block = (size_t)sfs.f_bsize;
    return (long)(unsigned long)sfs.f_type;
}

ssize_t hl_os_fd_path(int fd, char *out, size_t size)
{
    char link[40];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    out[n > 0 ? n : 0] = 0;
    return n;
}

ssize_t hl_os_read_all(int fd, void *buf, size_t size, off_t off)
{
    size_t done = 0;
    while (done < size) {
        ssize_t r = pread(fd, (char *)buf + done, size - done, off + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

ssize_t hl_os_read(int fd, void *buf, size_t size)
{
    ssize_t n;
    do
        n = read(fd, buf, size);
    while (n < 0 && errno == EINTR);
    return n;
}

ssize_t hl_os_read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    do
        n = read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    hl_os_close(fd);
    buf[n > 0 ? n : 0] = 0;
    return n;
}

long hl_os_read_long(const char *path)
{
    char buf[64];
    if (hl_os_read_file(path, buf, sizeof buf) <= 0)
        return -1;
    return strtol(buf, NULL, 10);
}

void hl_os_write_all(int fd, const char *buf, size_t n)
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

int hl_os_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int hl_os_affinity(void *set, size_t size) { return sched_getaffinity(0, size, set); }

int hl_os_current_node(void)
{
    unsigned cpu = 0, node = 0;
    return syscall(SYS_getcpu, &cpu, &node, NULL) == 0 ? (int)node : -1;
}

long hl_os_cpus(void) { return sysconf(_SC_NPROCESSORS_ONLN); }

uint64_t hl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct {
    void (*fn)(void *);
    void *arg;
} par_job;

static void *par_main(void *a)
{
    par_job *j = a;
    j->fn(j->arg);
    return NULL;
}

void hl_os_parallel(void (*fn)(void *), void *args, size_t argsize, int n)
{
    pthread_t th[16];
    par_job jobs[16];
    int started[16] = {0};
    if (n > 16)
        n = 16;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the program's handlers never run on our threads */
    for (int i = 1; i < n; i++) {
        jobs[i] = (par_job){fn, (char *)args + (size_t)i * argsize};
        started[i] = pthread_create(&th[i], NULL, par_main, &jobs[i]) == 0;
        if (!started[i])
            fn((char *)args + (size_t)i * argsize);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (n > 0)
        fn(args);
    for (int i = 1; i < n; i++)
        if (started[i])
            pthread_join(th[i], NULL); /* not a cancellation point here: slow paths disable it */
}

/* ---- the library's own memory ---------------------------------------------- */

#define MEM_RESERVE ((size_t)64 << 20)
#define MEM_PAGES (MEM_RESERVE / KB4)
static unsigned char *g_mem;
static uint64_t g_mem_used[MEM_PAGES / 64];
static size_t g_mem_hint;
static pthread_mutex_t g_mem_lock = PTHREAD_MUTEX_INITIALIZER;

void hl_mem_init(void)
{
    void *p = r_mmap(NULL, MEM_RESERVE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) {
        g_mem = p;
        hl_os_name(p, MEM_RESERVE, "hugeload:internal");
    }
}

static int mem_used(size_t i) { return (g_mem_used[i / 64] >> (i % 64)) & 1; }
static void mem_mark(size_t i, size_t n, int used)
{
    for (size_t k = i; k < i + n; k++)
        if (used)
            g_mem_used[k / 64] |= 1ull << (k % 64);
        else
            g_mem_used[k / 64] &= ~(1ull << (k % 64));
}

void *hl_mem_alloc(size_t bytes)
{
    size_t n = round_up(bytes, KB4) / KB4;
    if (g_mem && n <= MEM_PAGES / 4) {
        pthread_mutex_lock(&g_mem_lock);
        for (size_t pass = 0; pass < 2; pass++) {
            size_t start = pass ? 0 : g_mem_hint, end = pass ? g_mem_hint : MEM_PAGES;
            for (size_t i = start; i + n <= end;) {
                size_t k = 0;
                while (k < n && !mem_used(i + k))
                    k++;
                if (k == n) {
                    void *p = g_mem + i * KB4;
                    if (r_mprotect(p, n * KB4, PROT_READ | PROT_WRITE) != 0)
                        goto fallback;
                    mem_mark(i, n, 1);
                    g_mem_hint = i + n;
                    pthread_mutex_unlock(&g_mem_lock);
                    return p;
                }
                i += k + 1;
            }
        }
    fallback:
        pthread_mutex_unlock(&g_mem_lock);
    }
    void *p = r_mmap(NULL, n * KB4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void hl_mem_free(void *p, size_t bytes)
{
    size_t n = round_up(bytes, KB4) / KB4;
    if (g_mem && (unsigned char *)p >= g_mem && (unsigned char *)p < g_mem + MEM_RESERVE) {
        pthread_mutex_lock(&g_mem_lock);
        r_madvise(p, n * KB4, MADV_DONTNEED); /* zero again for the next user */
        r_mprotect(p, n * KB4, PROT_NONE);
        size_t i = (size_t)((unsigned char *)p - g_mem) / KB4;
        mem_mark(i, n, 0);
        if (i < g_mem_hint)
            g_mem_hint = i;
        pthread_mutex_unlock(&g_mem_lock);
        return;
    }
    r_munmap(p, n * KB4);
}

void hl_mem_reinit_child(void) { pthread_mutex_init(&g_mem_lock, NULL); }
