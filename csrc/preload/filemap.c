/*
 * filemap.c: mmap of regular files (no MAP_FIXED, offset 0 unless hugetlbfs).
 *
 *   - fd on hugetlbfs ("direct"): a MAP_PRIVATE map without PROT_WRITE would
 *     reserve a second set of pages, so the file is reopened read-only
 *     (/proc/self/fd/N) and mapped MAP_SHARED from that descriptor: writes
 *     can never reach the file, even after mprotect(PROT_WRITE), which the
 *     kernel refuses (EACCES) on such a map.  That refusal is the one
 *     difference from a private map (documented; a private hugetlbfs map
 *     that is then written needs pages the pool rarely has).  Writable or
 *     shared maps are passed through.  The mapping is tracked so 4 KB
 *     munmaps of it succeed.
 *   - a file in the redirect index ("staged", redirect.c): the staged
 *     hugetlbfs file, opened O_RDONLY, checked root-owned and not group/other
 *     writable, is mapped MAP_SHARED with the requested protection less
 *     PROT_WRITE: private writes cannot reach the staged file that other
 *     engines share (mprotect(PROT_WRITE) fails EACCES, as above).  A
 *     writable MAP_PRIVATE is never redirected.
 *   - otherwise, with HUGELOAD_COPY=1 ("copy"): anonymous huge pages,
 *     pre-faulted, filled by parallel preads, then mprotect'ed to the
 *     requested protection.
 *   - otherwise the real mmap (reported page=4K fill=none).
 * Only offset-0 maps of at least 2 MiB not longer than the file are
 * considered, and only selected files (HUGELOAD_FILES).
 */
#include "hl.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define HL_HUGETLBFS_MAGIC 0x958458f6UL

static int add_region(void *p, size_t maplen, size_t len, size_t unit, int origin, int page, const char *what,
                      uint64_t t0, unsigned flags)
{
    uint64_t ns = hl_now_ns() - t0;
    int rec = hl_record(what, len, maplen, page, origin, ns, (uintptr_t)p, 1);
    hl_lock();
    hl_region *r = hl_region_add((uintptr_t)p, maplen, len, unit, origin, page, what, rec);
    if (r)
        r->flags |= flags;
    hl_unlock();
    if (!r) {
        hl_record_gone(rec);
        return -1;
    }
    hl_log(2, "%s: %zu bytes on %s pages (%s) at %p, %.3f ms", what, len, hl_page_name[page], hl_origin_name[origin],
           p, ns / 1e6);
    return 0;
}

static int selected(const char *path, const struct stat *st, size_t len, int staged)
{
    if (!hl_have_files)
        return staged || ((size_t)st->st_size >= hl_min_file && len >= (size_t)st->st_size);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *s = hl_files;
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

static void *map_staged(size_t len, int prot, int flags, const struct stat *st, const char *staged, const char *what)
{
    uint64_t t0 = hl_now_ns();
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
    if (!hl_trusted(&sst, staged, "staged copy")) {
        close(sfd);
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
    if (add_region(p, maplen, len, gran, ORIGIN_STAGED, gran == GB1 ? PAGE_1G : PAGE_2M, what, t0, 0) != 0) {
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
static int fill(int fd, void *dst, size_t total)
{
    hl_fill_job j = {.fd = fd, .dst = dst, .total = total};
    atomic_init(&j.next, 0);
    atomic_init(&j.err, 0);
    size_t chunks = (total + FILL_CHUNK - 1) / FILL_CHUNK;
    int nt = hl_fill_threads;
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

/* A read-only copy on a memfd (1 GB pages) is mapped again from a read-only
 * fd of the same file: the pages stay, and the map can no longer be made
 * writable, so the program and its forked children share it safely (a
 * write through it would reach every process mapping it; mprotect(PROT_WRITE)
 * fails with EACCES instead, as on a staged copy).  0; -1: not sealed, the
 * map as it was; -2: the map is gone (a failed MAP_FIXED may unmap first). */
static int reopen_rdonly(int fd);

static int seal(int memfd, void *p, size_t maplen, int prot)
{
    int rfd = reopen_rdonly(memfd);
    if (rfd < 0)
        return -1;
    void *q = r_mmap(p, maplen, prot & (PROT_READ | PROT_EXEC), MAP_SHARED | MAP_FIXED, rfd, 0);
    close(rfd);
    return q == p ? 0 : -2;
}

static void *map_copy(size_t len, int prot, int fd, const struct stat *st, const char *what)
{
    uint64_t t0 = hl_now_ns();
    hl_anon a;
    if (!hl_anon_huge(len, 0, what, 1, &a))
        return NULL;
    int e = fill(fd, a.p, min_sz(len, (size_t)st->st_size));
    if (e) {
        r_munmap(a.p, a.maplen);
        if (a.fd >= 0)
            close(a.fd);
        hl_warn_once(R_READ, "reading %s for its huge page copy failed (%s): using the real mmap", what,
                     e == ENODATA ? "file shorter than its size" : strerror(e));
        return NULL;
    }
    unsigned fl = (prot & PROT_WRITE) ? HL_RF_WRITABLE : 0;
    if (a.fd >= 0) {
        int sealed = (prot & PROT_WRITE) ? -1 : seal(a.fd, a.p, a.maplen, prot);
        close(a.fd);
        if (sealed == -2) {
            r_munmap(a.p, a.maplen);
            hl_warn_once(R_MPROTECT, "mapping the copy of %s read-only failed (%s): using the real mmap", what,
                         strerror(errno));
            return NULL;
        }
        fl |= HL_RF_SHARED | (sealed == 0 ? HL_RF_SEALED : 0);
        if (sealed != 0)
            fl |= HL_RF_WRITABLE; /* writable by mprotect: a forked child gets its own copy */
    }
    if (prot != (PROT_READ | PROT_WRITE) && !(fl & HL_RF_SEALED) && mprotect(a.p, a.maplen, prot) != 0)
        hl_warn_once(R_MPROTECT, "mprotect of the copy of %s failed (%s): left writable", what, strerror(errno));
    if (add_region(a.p, a.maplen, len, a.unit, ORIGIN_COPY, a.page, what, t0, fl) != 0) {
        r_munmap(a.p, a.maplen);
        return NULL;
    }
    return a.p;
}

/* The same open file again, read-only (through /proc/self/fd), or -1: a
 * MAP_SHARED map of it can never be made writable. */
static int reopen_rdonly(int fd)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    return open(link, O_RDONLY | O_CLOEXEC);
}

static void fd_path(int fd, char *path, size_t size)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    path[n > 0 ? n : 0] = 0;
}

/* The program maps a hugetlbfs file itself. */
static void *map_hugetlbfs(size_t len, int prot, int flags, int fd, off_t off, const struct statfs *sfs)
{
    uint64_t t0 = hl_now_ns();
    void *p = MAP_FAILED;
    if ((flags & MAP_TYPE) == MAP_PRIVATE && !(prot & PROT_WRITE)) {
        int rfd = reopen_rdonly(fd);
        if (rfd >= 0) {
            p = r_mmap(NULL, len, prot, (flags & ~MAP_TYPE) | MAP_SHARED, rfd, off);
            close(rfd);
        }
    }
    if (p == MAP_FAILED)
        p = r_mmap(NULL, len, prot, flags, fd, off);
    if (p == MAP_FAILED)
        return p;
    size_t gran = (size_t)sfs->f_bsize;
    if (gran < MB2 || !pow2(gran) || ((uintptr_t)p & (gran - 1)))
        return p;
    char path[PATH_MAX], what[64];
    fd_path(fd, path, sizeof path);
    hl_encode_what(path, what, sizeof what);
    add_region(p, round_up(len, gran), len, gran, ORIGIN_DIRECT, gran == GB1 ? PAGE_1G : PAGE_2M, what, t0, 0);
    return p;
}

void *hl_mmap_file(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    int saved = errno;
    struct stat st;
    struct statfs sfs;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto real;
    if (fstatfs(fd, &sfs) == 0 && (unsigned long)sfs.f_type == HL_HUGETLBFS_MAGIC) {
        void *p = map_hugetlbfs(len, prot, flags, fd, off, &sfs);
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
    char path[PATH_MAX], what[64];
    hl_staged_copy staged;
    fd_path(fd, path, sizeof path);
    hl_encode_what(path, what, sizeof what);
    int found = hl_index_lookup(&st, what, &staged);
    if (!selected(path, &st, len, found))
        goto real;
    void *p = NULL;
    if (found) {
        if (type == MAP_PRIVATE && writable)
            hl_warn_once(R_PRIVW, "%s is mapped writable and private: not redirected to its staged copy", what);
        else
            p = map_staged(len, prot, flags, &st, staged.path, what);
    }
    if (!p && hl_copy)
        p = map_copy(len, prot, fd, &st, what);
    if (!p && !found && !hl_copy)
        hl_warn_once(R_NOTSTAGED, "%s is not staged and HUGELOAD_COPY is off: left on 4 KB pages", what);
    if (p) {
        errno = saved;
        return p;
    }
    errno = saved;
    p = r_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED)
        hl_record(what, len, len, PAGE_4K, ORIGIN_NONE, 0, (uintptr_t)p, 0);
    return p;
real:
    errno = saved;
    return r_mmap(addr, len, prot, flags, fd, off);
}
