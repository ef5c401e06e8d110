/*
 * os.c: the real functions and the OS primitives.
 *
 * r_* point at the next definition (glibc's) once hl_resolve() has asked
 * dlsym(RTLD_NEXT); before that, the boot_* versions call the kernel with
 * syscall() and serve dlsym's own calloc/malloc from a static arena that is
 * never freed.  hl_os_* are the primitives regions.c uses (and that
 * tests/native/test_regions.c fakes); they go through r_* so they never
 * recurse into our own overrides.
 */
#include "hl.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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

void *(*r_mmap)(void *, size_t, int, int, int, off_t) = boot_mmap;
int (*r_munmap)(void *, size_t) = boot_munmap;
int (*r_madvise)(void *, size_t, int) = boot_madvise;
int (*r_posix_madvise)(void *, size_t, int) = boot_posix_madvise;
int (*r_mlock)(const void *, size_t) = boot_mlock;
int (*r_munlock)(const void *, size_t) = boot_munlock;
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

int hl_os_unmap(uintptr_t addr, size_t len) { return r_munmap((void *)addr, len); }

int hl_os_release(uintptr_t addr, size_t len, int shared)
{
    /* A failed punch keeps the pages until the whole file goes (its last map): not lost. */
    if (shared)
        r_madvise((void *)addr, len, MADV_REMOVE);
    return r_munmap((void *)addr, len);
}

void *hl_os_pages(size_t bytes)
{
    void *p = r_mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void hl_os_pages_free(void *p, size_t bytes) { r_munmap(p, bytes); }

uint64_t hl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

ssize_t hl_read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n;
    do
        n = read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    return n;
}

long hl_read_long(const char *path)
{
    char buf[64];
    if (hl_read_small(path, buf, sizeof buf) <= 0)
        return -1;
    return strtol(buf, NULL, 10);
}
