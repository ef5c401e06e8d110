/*
 * lockprobe: checks the preload library's slow-path discipline from outside.
 * Preloaded AFTER libhugeload.so (LD_PRELOAD="libhugeload.so lockprobe.so"),
 * it is what the library's "next" munmap, madvise, memset and memcpy resolve
 * to, and it sees every open().  Once armed with a pointer to a large
 * allocation of the library's (lockprobe_arm), each probed call asks: is the
 * library's lock held right now?  A helper thread calls
 * malloc_usable_size(ptr), which takes the library's lock; if that does not
 * return within a second, the calling thread holds it.  Probed: munmap (any),
 * memset and memcpy of 1 MiB or more, open of a /sys path.  Counted too: opens
 * of the pools' free_hugepages files (the library must not read /sys on every
 * fallback).  lockprobe_report() prints
 *   LOCKPROBE violations=N sysreads=M
 * and one "LOCKPROBE held in <call>" line per violation.
 * Built by tests/test_preload.py:
 *   cc -shared -fPIC -pthread tests/native/lockprobe.c -o lockprobe.so -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void *g_probe;
static atomic_int g_violations, g_sysreads;
static __thread int t_in_probe;

__attribute__((visibility("default"))) void lockprobe_arm(void *p) { g_probe = p; }

typedef struct {
    atomic_int done;
} job_t;

static void *helper(void *arg)
{
    job_t *j = arg;
    size_t (*usable)(void *) = (size_t(*)(void *))dlsym(RTLD_DEFAULT, "malloc_usable_size");
    usable(g_probe);
    atomic_store(&j->done, 1);
    return NULL;
}

static void probe(const char *what)
{
    if (!g_probe || t_in_probe)
        return;
    t_in_probe = 1;
    job_t *j = calloc(1, sizeof *j);
    pthread_t t;
    if (j && pthread_create(&t, NULL, helper, j) == 0) {
        for (int i = 0; i < 1000 && !atomic_load(&j->done); i++)
            usleep(1000);
        if (!atomic_load(&j->done)) {
            atomic_fetch_add(&g_violations, 1);
            char line[128];
            int n = snprintf(line, sizeof line, "LOCKPROBE held in %s\n", what);
            write(1, line, (size_t)n);
            pthread_detach(t); /* it returns once the lock is released */
        } else {
            pthread_join(t, NULL);
            free(j);
        }
    }
    t_in_probe = 0;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

__attribute__((visibility("default"))) int munmap(void *a, size_t len)
{
    probe("munmap");
    return NEXT(munmap)(a, len);
}

__attribute__((visibility("default"))) void *memset(void *d, int c, size_t n)
{
    static void *(*real)(void *, int, size_t);
    if (!real)
        real = NEXT(memset);
    if (n >= (1 << 20))
        probe("memset");
    return real(d, c, n);
}

__attribute__((visibility("default"))) void *memcpy(void *d, const void *s, size_t n)
{
    static void *(*real)(void *, const void *, size_t);
    if (!real)
        real = NEXT(memcpy);
    if (n >= (1 << 20))
        probe("memcpy");
    return real(d, s, n);
}

__attribute__((visibility("default"))) int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int mode = (flags & O_CREAT) ? va_arg(ap, int) : 0;
    va_end(ap);
    if (!strncmp(path, "/sys/", 5)) {
        if (strstr(path, "free_hugepages"))
            atomic_fetch_add(&g_sysreads, 1);
        probe("open /sys");
    }
    return NEXT(open)(path, flags, mode);
}

__attribute__((visibility("default"))) void lockprobe_report(void)
{
    printf("LOCKPROBE violations=%d sysreads=%d\n", atomic_load(&g_violations), atomic_load(&g_sysreads));
    fflush(stdout);
}
