/*
 * Test harness for the preload library: replays what llama.cpp does with a
 * model file and with large buffers, and checks every call.  Run with
 * LD_PRELOAD=libhugeload.so by tests/test_preload.py.
 *
 *   harness map FILE [--cycles N] [--pause] [--pause-all] [--pause-mid] [--private]
 *       fopen/ftell size, posix_fadvise, mmap(PROT_READ, MAP_SHARED|MAP_POPULATE),
 *       posix_madvise/madvise WILLNEED on 4 KB-rounded pieces, content check
 *       against pread, mlock of growing 4 KB-rounded prefixes, then llama's
 *       unmap_fragment pieces and a destructor that unmaps what is left, the
 *       last piece ending at the unaligned file size.
 *   harness alloc THRESHOLD [--pause] [--big N]
 *       malloc/calloc/realloc/posix_memalign/aligned_alloc/memalign/valloc/
 *       reallocarray around THRESHOLD; checks contents, zeroing, alignment and
 *       malloc_usable_size; frees everything.
 *   harness fork THRESHOLD
 *       a forked child uses and frees the parent's big buffer, then makes its own.
 *   harness threads THRESHOLD N ITERS [FILE]
 *       N threads allocating/freeing around THRESHOLD (and mapping FILE privately).
 *   harness hole FILE SIZE
 *       maps FILE whole (private), gives 4 x 2 MB in the middle back (munmap), then
 *       malloc(SIZE) hoping the kernel puts it in that hole ("HOLE hit=0|1"),
 *       frees it, unmaps the rest; a munmap after that must reach the kernel.
 *   harness privw FILE
 *       opens FILE O_RDWR, maps it MAP_PRIVATE PROT_READ, tries
 *       mprotect(PROT_READ|PROT_WRITE) and a write, then a forked child reads
 *       it: "PRIVW mprotect=<errno>
 *       file_changed=0|1 child_ok=0|1".
 *   harness forkwrite SIZE [--dontfork] [--wipeonfork] [--forks N]
 *       malloc(SIZE), filled; fork; the child writes all of it and checks it
 *       (with --dontfork: checks it has no mapping there; --wipeonfork: zeros);
 *       N times, one child after another (default 1).
 *   harness shrink SIZE NEWSIZE
 *       malloc(SIZE), pause, realloc to NEWSIZE (same pointer expected), pause.
 *   harness thp SIZE
 *       malloc(SIZE) (the test makes it THP), touch, pause, MADV_DONTNEED of
 *       it, pause, mlock, pause ("VMA rss_kb=.. locked_kb=..").
 *   harness cancel SIZE N
 *       N times: a thread looping big malloc/free is cancelled; then the main
 *       thread must still get big allocations ("CANCEL ok").
 *   harness stall SIZE
 *       fills stderr (a pipe nobody reads), starts a thread whose logging
 *       blocks, then checks the main thread still gets the lock ("STALL ok").
 *   harness forkfail SIZE
 *       malloc(SIZE) filled; a child is forked under an RLIMIT_AS that leaves no
 *       room for its own copy of it; the parent frees it, then the child reads
 *       it: "FORKFAIL child=<status>" (0: it still saw the data).
 *   harness unmap1g FILE
 *       maps FILE private read-only, pauses, unmaps all but its first GiB,
 *       pauses, unmaps the rest.
 *   harness accmode FILE
 *       maps FILE (private, read-only) from an O_WRONLY and from an O_PATH fd:
 *       "ACCMODE wronly=<errno> path=<errno>" (the kernel refuses both).
 *   harness lockprobe FILE
 *       with tests/native/lockprobe.c preloaded after the library: arms it with
 *       a large allocation, then MADV_DONTNEED on a 256 MiB allocation, a
 *       private map of FILE (copied) unmapped across a given-back hole, and
 *       eight large allocations; prints lockprobe's report.
 *
 * Output: "READY addr=0x.. size=N" then waits for a line on stdin (pauses);
 * "ERROR ..." lines for failed checks; at the end "HUGE_LEFT vmas=N kb=N"
 * (hugetlb or THP memory still mapped) and "DONE errors=N".  Exit status 0
 * when there was no error.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int errors;
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;

#define FAIL(...)                              \
    do {                                       \
        pthread_mutex_lock(&err_lock);         \
        printf("ERROR " __VA_ARGS__);          \
        printf("\n");                          \
        fflush(stdout);                        \
        errors++;                              \
        pthread_mutex_unlock(&err_lock);       \
    } while (0)

static size_t page_size;

static void pause_here(void *addr, size_t size)
{
    printf("READY addr=%p size=%zu pid=%d\n", addr, size, (int)getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        FAIL("stdin closed while paused");
}

/* hugetlb (KernelPageSize >= 2 MB) or THP memory still mapped in this process. */
static void huge_left(void)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) {
        FAIL("cannot read smaps");
        return;
    }
    char line[512];
    long vmas = 0, kb = 0, size = 0, v;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "Size: %ld kB", &v) == 1)
            size = v;
        else if (sscanf(line, "KernelPageSize: %ld kB", &v) == 1 && v >= 2048) {
            vmas++;
            kb += size;
        } else if (sscanf(line, "AnonHugePages: %ld kB", &v) == 1 && v > 0) {
            vmas++;
            kb += v;
        }
    }
    fclose(f);
    printf("HUGE_LEFT vmas=%ld kb=%ld\n", vmas, kb);
}

/* ---- map: the engine's model mapping ---------------------------------- */

typedef struct {
    size_t first, last;
} frag_t;

struct mapping {
    uint8_t *addr;
    size_t size;
    frag_t frags[16];
    int nfrags;
};

static void align_range(size_t *first, size_t *last)
{
    size_t in_page = *first & (page_size - 1);
    *first += in_page ? page_size - in_page : 0;
    *last &= ~(page_size - 1);
    if (*last <= *first)
        *last = *first;
}

/* The engine's unmap_fragment: unmap the whole pages inside [first, last). */
static void unmap_fragment(struct mapping *m, size_t first, size_t last)
{
    align_range(&first, &last);
    if (last == first)
        return;
    if (munmap(m->addr + first, last - first))
        FAIL("munmap fragment off=%zu len=%zu: %s", first, last - first, strerror(errno));
    frag_t out[16];
    int n = 0;
    for (int i = 0; i < m->nfrags; i++) {
        frag_t f = m->frags[i];
        if (f.first < first && f.last > last) {
            out[n++] = (frag_t){f.first, first};
            out[n++] = (frag_t){last, f.last};
        } else if (f.first < first && f.last > first) {
            out[n++] = (frag_t){f.first, first};
        } else if (f.first < last && f.last > last) {
            out[n++] = (frag_t){last, f.last};
        } else if (f.first >= first && f.last <= last) {
        } else {
            out[n++] = f;
        }
    }
    memcpy(m->frags, out, sizeof(frag_t) * (size_t)n);
    m->nfrags = n;
}

static void verify(const uint8_t *addr, int fd, size_t size)
{
    size_t chunk = 1 << 20;
    uint8_t *buf = malloc(chunk);
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t r = pread(fd, buf, n, (off_t)off);
        if (r != (ssize_t)n) {
            FAIL("pread at %zu", off);
            break;
        }
        if (memcmp(buf, addr + off, n)) {
            FAIL("content differs from the file near offset %zu", off);
            break;
        }
    }
    free(buf);
}

static int pause_mid; /* --pause-mid: pause again after the fragments are unmapped */

static int map_cycle(const char *path, int private_map, int pause)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        FAIL("fopen %s: %s", path, strerror(errno));
        return -1;
    }
    fseek(fp, 0, SEEK_END);
    size_t size = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    int fd = fileno(fp);
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    struct mapping m = {0};
    m.size = size;
    m.addr = mmap(NULL, size, PROT_READ, (private_map ? MAP_PRIVATE : MAP_SHARED) | MAP_POPULATE, fd, 0);
    if (m.addr == MAP_FAILED) {
        FAIL("mmap: %s", strerror(errno));
        fclose(fp);
        return -1;
    }
    m.frags[0] = (frag_t){0, size};
    m.nfrags = 1;
    int rc;
    if ((rc = posix_madvise(m.addr, size, POSIX_MADV_WILLNEED)))
        FAIL("posix_madvise WILLNEED: %s", strerror(rc));
    if ((rc = posix_madvise(m.addr, size, POSIX_MADV_RANDOM)))
        FAIL("posix_madvise RANDOM: %s", strerror(rc));
    /* 4 KB-rounded sub-ranges, as the engine's prefetch of tensors does. */
    for (size_t off = 0; off + page_size < size; off += (size / 7) & ~(page_size - 1)) {
        size_t len = ((size - off) / 3 + page_size - 1) & ~(page_size - 1);
        if (madvise(m.addr + off, len, MADV_WILLNEED))
            FAIL("madvise WILLNEED off=%zu: %s", off, strerror(errno));
        if (!(size / 7))
            break;
    }
    verify(m.addr, fd, size);
    /* mlock of growing prefixes, rounded up to 4 KB. */
    size_t locked = 0;
    size_t targets[] = {size / 4 + 1, size / 2 + 3, size};
    for (int i = 0; i < 3; i++) {
        size_t t = (targets[i] + page_size - 1) & ~(page_size - 1);
        if (t > locked) {
            if (mlock(m.addr + locked, t - locked))
                FAIL("mlock off=%zu len=%zu: %s", locked, t - locked, strerror(errno));
            locked = t;
        }
    }
    if (munlock(m.addr, page_size * 3))
        FAIL("munlock: %s", strerror(errno));
    if (pause)
        pause_here(m.addr, size);
    /* After loading: the engine unmaps the parts it copied elsewhere. */
    unmap_fragment(&m, size / 3 + 123, 2 * (size / 3) + 77);
    unmap_fragment(&m, 0, size / 5 + 1);
    unmap_fragment(&m, size / 3 + 5000, size / 3 + 9000); /* already gone: a no-op */
    if (pause && pause_mid)
        pause_here(m.addr, size);
    /* The destructor: whatever is left, the last piece ending at the unaligned size. */
    for (int i = 0; i < m.nfrags; i++)
        if (munmap(m.addr + m.frags[i].first, m.frags[i].last - m.frags[i].first))
            FAIL("munmap failed: %s (off=%zu len=%zu)", strerror(errno), m.frags[i].first,
                 m.frags[i].last - m.frags[i].first);
    fclose(fp);
    return 0;
}

/* ---- alloc: large buffers around the threshold ------------------------ */

static void fill_check(uint8_t *p, size_t n, const char *what)
{
    if (!p) {
        FAIL("%s(%zu) returned NULL", what, n);
        return;
    }
    if (malloc_usable_size(p) < n)
        FAIL("%s(%zu): usable size %zu too small", what, n, malloc_usable_size(p));
    for (size_t i = 0; i < n - 1; i += 4096)
        p[i] = (uint8_t)(i >> 12);
    p[n - 1] = 0x5a;
    for (size_t i = 0; i < n - 1; i += 4096)
        if (p[i] != (uint8_t)(i >> 12)) {
            FAIL("%s(%zu): memory does not keep what was written", what, n);
            break;
        }
    if (p[n - 1] != 0x5a)
        FAIL("%s(%zu): last byte lost", what, n);
    printf("ALLOC fn=%s size=%zu addr=%p\n", what, n, (void *)p);
}

static void check_zero(const uint8_t *p, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i += 4096)
        if (p[i] || p[i + (i + 4095 < n ? 4095 : n - 1 - i)]) {
            FAIL("%s: not zero at %zu", what, i);
            return;
        }
}

static void run_alloc(size_t th, int pause, size_t big)
{
    size_t sizes[] = {th - 1, th, th + 1, 3 * th + 12345};
    for (int i = 0; i < 4; i++) {
        uint8_t *p = malloc(sizes[i]);
        fill_check(p, sizes[i], "malloc");
        free(p);
        p = calloc(1, sizes[i]);
        if (p)
            check_zero(p, sizes[i], "calloc");
        fill_check(p, sizes[i], "calloc");
        free(p);
    }
    size_t aligns[] = {64, 4096, (size_t)2 << 20, (size_t)8 << 20};
    for (int i = 0; i < 4; i++) {
        void *p = NULL;
        int rc = posix_memalign(&p, aligns[i], th + 4096);
        if (rc || ((uintptr_t)p & (aligns[i] - 1)))
            FAIL("posix_memalign(%zu): rc=%d p=%p", aligns[i], rc, p);
        fill_check(p, th + 4096, "posix_memalign");
        free(p);
        p = aligned_alloc(aligns[i], 2 * th);
        if (!p || ((uintptr_t)p & (aligns[i] - 1)))
            FAIL("aligned_alloc(%zu): p=%p", aligns[i], p);
        fill_check(p, 2 * th, "aligned_alloc");
        free(p);
        p = memalign(aligns[i], th);
        if (!p || ((uintptr_t)p & (aligns[i] - 1)))
            FAIL("memalign(%zu): p=%p", aligns[i], p);
        fill_check(p, th, "memalign");
        free(p);
    }
    void *v = valloc(th);
    if ((uintptr_t)v & 4095)
        FAIL("valloc not page-aligned");
    fill_check(v, th, "valloc");
    free(v);
    /* realloc: small -> big -> bigger -> small, contents kept. */
    uint8_t *p = malloc(1000);
    memset(p, 0x11, 1000);
    p = realloc(p, 2 * th);
    if (!p || p[0] != 0x11 || p[999] != 0x11)
        FAIL("realloc small->big lost contents");
    memset(p, 0x22, 2 * th);
    p = realloc(p, 2 * th + 100);
    if (!p || p[0] != 0x22 || p[2 * th - 1] != 0x22)
        FAIL("realloc big->bigger lost contents");
    p = realloc(p, 5 * th);
    if (!p || p[0] != 0x22 || p[2 * th - 1] != 0x22)
        FAIL("realloc big->much bigger lost contents");
    p = realloc(p, 100);
    if (!p || p[0] != 0x22 || p[99] != 0x22)
        FAIL("realloc big->small lost contents");
    free(p);
    p = reallocarray(NULL, th / 8, 8);
    fill_check(p, th, "reallocarray");
    /* MADV_DONTNEED on anonymous memory zeroes it: still true on huge pages. */
    memset(p, 0x33, th);
    uint8_t *pa = (uint8_t *)(((uintptr_t)p + 4095) & ~(uintptr_t)4095);
    size_t palen = (th - (size_t)(pa - p)) & ~(size_t)4095;
    if (madvise(pa, palen, MADV_DONTNEED))
        FAIL("madvise DONTNEED: %s", strerror(errno));
    check_zero(pa, palen, "after MADV_DONTNEED");
    if (mlock(p, th) || munlock(p, th))
        FAIL("mlock/munlock of a big buffer: %s", strerror(errno));
    free(p);
    if (big) {
        uint8_t *b = malloc(big);
        fill_check(b, big, "malloc");
        if (pause)
            pause_here(b, big);
        free(b);
    }
}

/* ---- threads ----------------------------------------------------------- */

static size_t t_th;
static int t_iters;
static const char *t_file;

static void *thread_main(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < t_iters; i++) {
        size_t n = t_th + (size_t)(rand_r(&seed) % 8) * (1 << 20);
        uint8_t *p = malloc(n);
        uint8_t *small = malloc(100 + (size_t)(rand_r(&seed) % 5000));
        if (!p || !small) {
            FAIL("thread malloc");
            continue;
        }
        memset(p, (int)i, n);
        if (p[n / 2] != (uint8_t)i)
            FAIL("thread memory");
        free(small);
        p = realloc(p, n + (1 << 20));
        free(p);
        if (t_file && i % 4 == 0)
            map_cycle(t_file, 1, 0); /* private: the copy path (a shared map is never copied) */
    }
    return NULL;
}

/* ---- fork: a child inherits a big buffer, uses and frees it, makes its own --- */

static void run_fork(size_t th)
{
    uint8_t *p = malloc(th);
    fill_check(p, th, "malloc");
    pid_t pid = fork();
    if (pid == 0) {
        if (p[th - 1] != 0x5a)
            FAIL("child does not see the parent's buffer");
        free(p);
        uint8_t *q = malloc(2 * th);
        fill_check(q, 2 * th, "child-malloc");
        free(q);
        exit(errors ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        FAIL("child failed: status %d", status);
    if (p[th - 1] != 0x5a)
        FAIL("parent lost its buffer after fork");
    free(p);
}

/* ---- the issue-11 cases ------------------------------------------------ */

static void run_hole(const char *path, size_t size)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    size_t len = (size_t)st.st_size;
    uint8_t *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        FAIL("mmap: %s", strerror(errno));
        return;
    }
    size_t mid = ((len / 2) & ~((size_t)(2 << 20) - 1)) - ((uintptr_t)m & ((2 << 20) - 1));
    size_t hole = 4 * (2 << 20); /* an aligned hugetlb search needs the length plus one page of slack */
    if (munmap(m + mid, hole))
        FAIL("munmap hole: %s", strerror(errno));
    uint8_t *p = malloc(size);
    int hit = p >= m + mid && p < m + mid + hole;
    printf("HOLE hit=%d\n", hit);
    memset(p, 0x77, size);
    uintptr_t where = (uintptr_t)p;
    pause_here(p, size);
    free(p);
    (void)where;
    pause_here(m, size);
    if (munmap(m, mid) || munmap(m + mid + hole, len - mid - hole))
        FAIL("munmap rest: %s", strerror(errno));
    /* Nothing is ours now: a munmap of the old span reaches the kernel (success on nothing mapped). */
    if (munmap(m, len))
        FAIL("final munmap: %s", strerror(errno));
}

static void run_privw(const char *path)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        FAIL("open: %s", strerror(errno));
        return;
    }
    struct stat st;
    fstat(fd, &st);
    uint8_t before = 0, after = 0;
    pread(fd, &before, 1, 4096);
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
        FAIL("mmap: %s", strerror(errno));
        close(fd);
        return;
    }
    int e = 0;
    if (mprotect(m, 2 << 20, PROT_READ | PROT_WRITE) != 0)
        e = errno;
    else
        m[4096] = (uint8_t)(before + 1);
    pread(fd, &after, 1, 4096);
    /* A forked child reads the map (a private 1 GB page the kernel did not copy
     * to the child would need a new page here: SIGBUS with an empty pool). */
    pid_t pid = fork();
    if (pid == 0) {
        volatile uint8_t x = m[st.st_size / 2];
        (void)x;
        _exit(0);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    printf("PRIVW mprotect=%d file_changed=%d child_ok=%d\n", e, after != before, status == 0);
    munmap(m, (size_t)st.st_size);
    close(fd);
}

static int mapped_at(void *p)
{
    unsigned char v;
    return mincore((void *)((uintptr_t)p & ~(uintptr_t)4095), 4096, &v) == 0;
}

static void run_forkwrite(size_t size, int dontfork, int wipe, int forks)
{
    uint8_t *p = malloc(size);
    memset(p, 0x5a, size);
    if (dontfork && madvise(p, size, MADV_DONTFORK))
        FAIL("madvise DONTFORK: %s", strerror(errno));
    if (wipe && madvise(p, size, MADV_WIPEONFORK))
        FAIL("madvise WIPEONFORK: %s", strerror(errno));
    for (int k = 0; k < forks && !errors; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            if (dontfork) {
                if (mapped_at(p) || mapped_at(p + size - 1))
                    FAIL("child has the DONTFORK memory");
            } else {
                if (p[size / 2] != (wipe ? 0 : 0x5a))
                    FAIL("child sees %d", p[size / 2]);
                memset(p, 0x33, size); /* the write that SIGBUSed */
                for (size_t i = 0; i < size; i += 4096)
                    if (p[i] != 0x33) {
                        FAIL("child memory at %zu", i);
                        break;
                    }
            }
            _exit(errors ? 1 : 0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status))
            FAIL("child killed by signal %d", WTERMSIG(status));
        else if (WEXITSTATUS(status))
            FAIL("child failed: %d", WEXITSTATUS(status));
        if (p[size - 1] != 0x5a)
            FAIL("parent lost its buffer");
    }
    memset(p, 0x11, size); /* the parent writes after the children: still its own pages */
    if (!errors)
        printf("FORKWRITE ok\n");
    free(p);
}

static void run_shrink(size_t size, size_t newsize)
{
    uint8_t *p = malloc(size);
    memset(p, 0x42, size);
    pause_here(p, size);
    uint8_t *q = realloc(p, newsize);
    if (q != p)
        FAIL("shrinking realloc moved the block");
    if (q[newsize - 1] != 0x42)
        FAIL("shrinking realloc lost data");
    pause_here(q, newsize);
    free(q);
}

static long vma_kb(void *addr, const char *key)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char dash;
        if (sscanf(line, "%lx%c%lx ", &a, &dash, &b) == 3 && dash == '-') {
            in = (uintptr_t)addr >= a && (uintptr_t)addr < b;
            continue;
        }
        if (in && !strncmp(line, key, kl) && line[kl] == ':') {
            v = atol(line + kl + 1);
            break;
        }
    }
    fclose(f);
    return v;
}

static void run_thp(size_t size)
{
    uint8_t *p = malloc(size);
    memset(p, 0x42, size);
    printf("VMA rss_kb=%ld\n", vma_kb(p, "Rss"));
    if (madvise(p, size, MADV_DONTNEED))
        FAIL("madvise DONTNEED: %s", strerror(errno));
    printf("VMA after_dontneed_kb=%ld\n", vma_kb(p, "Rss"));
    if (p[size / 2] != 0)
        FAIL("DONTNEED left data");
    if (mlock(p, size))
        FAIL("mlock: %s", strerror(errno));
    printf("VMA locked_kb=%ld\n", vma_kb(p, "Locked"));
    pause_here(p, size);
    munlock(p, size);
    free(p);
}

static size_t c_size;
static void *churn(void *arg)
{
    for (;;) {
        void *p = malloc(c_size);
        free(p);
        pthread_testcancel();
    }
    return NULL;
}

static void run_cancel(size_t size, int n)
{
    c_size = size;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, churn, NULL);
        usleep(20000 + 3000 * i);
        pthread_cancel(t);
        pthread_join(t, NULL);
    }
    void *p = malloc(size);
    free(p);
    printf("CANCEL ok\n");
}

static void *stall_thread(void *arg)
{
    void *p = malloc(c_size); /* logs (HUGELOAD_LOG=2) into the full pipe: blocks there */
    free(p);
    return NULL;
}

static void run_stall(size_t size)
{
    c_size = size;
    void *keep = malloc(size);
    int fl = fcntl(2, F_GETFL);
    fcntl(2, F_SETFL, fl | O_NONBLOCK);
    char junk[4096];
    memset(junk, 'x', sizeof junk);
    while (write(2, junk, sizeof junk) > 0)
        ;
    fcntl(2, F_SETFL, fl);
    pthread_t t;
    pthread_create(&t, NULL, stall_thread, NULL);
    usleep(300000);
    /* Takes the lock, logs nothing: must not wait for the blocked thread. */
    if (malloc_usable_size(keep) < size)
        FAIL("usable size");
    madvise(keep, 4096, MADV_WILLNEED);
    printf("STALL ok\n");
    _exit(errors ? 1 : 0); /* the other thread is still blocked in write */
}

static void run_forkfail(size_t size)
{
    uint8_t *p = malloc(size);
    memset(p, 0x5a, size);
    int go[2];
    if (pipe(go)) {
        FAIL("pipe");
        return;
    }
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long vm_pages = 0;
    if (!f || fscanf(f, "%lu", &vm_pages) != 1)
        FAIL("statm");
    if (f)
        fclose(f);
    struct rlimit old, lim;
    getrlimit(RLIMIT_AS, &old);
    lim = old;
    lim.rlim_cur = vm_pages * 4096 + size / 4; /* the child cannot map a copy of p */
    setrlimit(RLIMIT_AS, &lim);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) < 0)
            _exit(3);
        _exit(p[0] == 0x5a && p[size / 2] == 0x5a && p[size - 1] == 0x5a ? 0 : 1);
    }
    setrlimit(RLIMIT_AS, &old);
    close(go[0]);
    free(p); /* the parent gives its pages back while the child still has them */
    if (write(go[1], "x", 1) != 1)
        FAIL("write");
    close(go[1]);
    int status = -1;
    waitpid(pid, &status, 0);
    printf("FORKFAIL child=%d\n", status);
}

static void run_unmap1g(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    size_t size = (size_t)st.st_size, gb = (size_t)1 << 30;
    uint8_t *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        FAIL("mmap: %s", strerror(errno));
        return;
    }
    pause_here(m, size);
    if (munmap(m + gb, size - gb))
        FAIL("munmap: %s", strerror(errno));
    pause_here(m, size);
    if (munmap(m, gb))
        FAIL("munmap: %s", strerror(errno));
}

static void run_accmode(const char *path)
{
    int e[2];
    int modes[2] = {O_WRONLY, O_PATH};
    for (int i = 0; i < 2; i++) {
        int fd = open(path, modes[i]);
        if (fd < 0) {
            FAIL("open: %s", strerror(errno));
            return;
        }
        struct stat st;
        fstat(fd, &st);
        errno = 0;
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        e[i] = m == MAP_FAILED ? errno : 0;
        if (m != MAP_FAILED)
            munmap(m, (size_t)st.st_size);
        close(fd);
    }
    printf("ACCMODE wronly=%d path=%d\n", e[0], e[1]);
}

static void run_lockprobe(const char *path)
{
    void (*arm)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "lockprobe_arm");
    void (*report)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "lockprobe_report");
    if (!arm || !report) {
        FAIL("lockprobe.so is not preloaded");
        return;
    }
    size_t mb = 1 << 20;
    uint8_t *probe = malloc(64 * mb);
    probe[0] = 1;
    arm(probe);
    /* The zeroing MADV_DONTNEED means on an allocation. */
    uint8_t *q = malloc(256 * mb);
    q[0] = q[256 * mb - 1] = 7;
    if (madvise(q, 256 * mb, MADV_DONTNEED))
        FAIL("madvise DONTNEED: %s", strerror(errno));
    if (q[0] || q[256 * mb - 1])
        FAIL("DONTNEED left data");
    free(q);
    /* A munmap across a hole nobody owns any more: a real munmap of that piece. */
    int fd = open(path, O_RDONLY);
    struct stat st;
    fstat(fd, &st);
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        FAIL("mmap: %s", strerror(errno));
    } else {
        if (munmap(m + 4 * mb, 2 * mb) || munmap(m, (size_t)st.st_size))
            FAIL("munmap: %s", strerror(errno));
    }
    /* Large allocations, each falling back when the pools are empty. */
    for (int i = 0; i < 8; i++) {
        void *p = malloc(4 * mb);
        memset(p, 1, 4096);
        free(p);
    }
    arm(NULL);
    free(probe);
    report();
}

int main(int argc, char **argv)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) {
        fprintf(stderr, "usage: see the comment at the top of harness.c\n");
        return 2;
    }
    if (!strcmp(argv[1], "map")) {
        int cycles = 1, pause = 0, pause_all = 0, priv = 0;
        for (int i = 3; i < argc; i++) {
            if (!strcmp(argv[i], "--cycles") && i + 1 < argc)
                cycles = atoi(argv[++i]);
            else if (!strcmp(argv[i], "--pause"))
                pause = 1;
            else if (!strcmp(argv[i], "--pause-all"))
                pause_all = 1;
            else if (!strcmp(argv[i], "--private"))
                priv = 1;
            else if (!strcmp(argv[i], "--pause-mid"))
                pause_mid = 1;
        }
        for (int c = 0; c < cycles; c++)
            map_cycle(argv[2], priv, pause_all || (pause && c == 0));
    } else if (!strcmp(argv[1], "alloc")) {
        int pause = 0;
        size_t big = 0;
        for (int i = 3; i < argc; i++) {
            if (!strcmp(argv[i], "--pause"))
                pause = 1;
            else if (!strcmp(argv[i], "--big") && i + 1 < argc)
                big = strtoull(argv[++i], NULL, 0);
        }
        run_alloc(strtoull(argv[2], NULL, 0), pause, big);
    } else if (!strcmp(argv[1], "fork")) {
        run_fork(strtoull(argv[2], NULL, 0));
    } else if (!strcmp(argv[1], "threads") && argc >= 5) {
        t_th = strtoull(argv[2], NULL, 0);
        int n = atoi(argv[3]);
        t_iters = atoi(argv[4]);
        t_file = argc > 5 ? argv[5] : NULL;
        pthread_t th[64];
        for (int i = 0; i < n && i < 64; i++)
            pthread_create(&th[i], NULL, thread_main, (void *)(uintptr_t)(i + 1));
        for (int i = 0; i < n && i < 64; i++)
            pthread_join(th[i], NULL);
    } else if (!strcmp(argv[1], "hole") && argc >= 4) {
        run_hole(argv[2], strtoull(argv[3], NULL, 0));
    } else if (!strcmp(argv[1], "privw")) {
        run_privw(argv[2]);
    } else if (!strcmp(argv[1], "forkwrite")) {
        int df = 0, wf = 0, forks = 1;
        for (int i = 3; i < argc; i++)
            if (!strcmp(argv[i], "--dontfork"))
                df = 1;
            else if (!strcmp(argv[i], "--wipeonfork"))
                wf = 1;
            else if (!strcmp(argv[i], "--forks") && i + 1 < argc)
                forks = atoi(argv[++i]);
        run_forkwrite(strtoull(argv[2], NULL, 0), df, wf, forks);
    } else if (!strcmp(argv[1], "shrink") && argc >= 4) {
        run_shrink(strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0));
    } else if (!strcmp(argv[1], "thp")) {
        run_thp(strtoull(argv[2], NULL, 0));
    } else if (!strcmp(argv[1], "cancel") && argc >= 4) {
        run_cancel(strtoull(argv[2], NULL, 0), atoi(argv[3]));
    } else if (!strcmp(argv[1], "stall")) {
        run_stall(strtoull(argv[2], NULL, 0));
    } else if (!strcmp(argv[1], "lockprobe")) {
        run_lockprobe(argv[2]);
    } else if (!strcmp(argv[1], "forkfail")) {
        run_forkfail(strtoull(argv[2], NULL, 0));
    } else if (!strcmp(argv[1], "unmap1g")) {
        run_unmap1g(argv[2]);
    } else if (!strcmp(argv[1], "accmode")) {
        run_accmode(argv[2]);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    huge_left();
    printf("DONE errors=%d\n", errors);
    return errors ? 1 : 0;
}
