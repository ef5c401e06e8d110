/*
 * filemap.c: mmap of regular files (never MAP_FIXED).
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
 *     PROT_WRITE.  A shared map is redirected only from a read-only fd (from
 *     a writable one the program could mprotect it writable and write the
 *     file); a writable private map never is.
 *   - otherwise, with HUGELOAD_COPY=1, a MAP_PRIVATE map ("copy"): anonymous
 *     huge pages, pre-faulted, filled by parallel preads, then given the
 *     requested protection.  A MAP_SHARED map is never copied: it must see
 *     the file's changes and its writes must reach the file (stage the file
 *     to put it in huge pages).
 *   - otherwise the real mmap (reported page=4K fill=none).
 * Staged and copied maps keep the kernel's own mapping of the file beside
 * them (the "shadow"): the real mmap with the program's own flags, made
 * first (so the kernel accepts or refuses the call exactly as without the
 * library: an O_WRONLY or O_PATH fd, a noexec mount, ...), then PROT_NONE
 * and never touched; it lies at the start of a PROT_NONE reservation as long
 * as the huge span, which covers the padding past the program's length.  demote.c moves pieces of it into place when a call
 * needs the file's own semantics (MADV_DONTNEED back to the file's
 * contents, mremap past the copy, ...).  It costs address space, no memory.
 * A private copy is a snapshot taken at mmap time: POSIX leaves it
 * unspecified whether a private map shows later changes to the file.
 * Only offset-0 maps of at least 2 MiB not longer than the file are
 * considered, and only selected files (HUGELOAD_FILES).  Path names live in a
 * scratch block of the library's own memory, not on the stack.
 */
#include "hl.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define HL_HUGETLBFS_MAGIC 0x958458f6UL

typedef struct {
    char path[PATH_MAX];
    char staged[PATH_MAX];
    char staged2[PATH_MAX];
    char pat[PATH_MAX];
    char what[64];
} scratch_t;

typedef struct {
    void *p;
    size_t maplen, unit;
    int page, fd;
} huge_map;

static int add_region(const huge_map *m, size_t len, int origin, const char *what, uint64_t t0, int prot,
                      unsigned flags, uintptr_t shadow, int locked)
{
    uint64_t ns = hl_now_ns() - t0;
    int rec = hl_record(what, len, m->maplen, m->page, origin, ns, (uintptr_t)m->p, 1);
    hl_lock();
    hl_region *r = hl_region_add((uintptr_t)m->p, m->maplen, len, m->unit, origin, m->page, what, rec, prot, flags);
    if (r && locked)
        hl_ivs_add(&r->locked, 0, round_up(len, KB4));
    if (r && shadow) {
        r->shadow = shadow;
        r->shadow_len = m->maplen;
        r->shadow_file = round_up(len, KB4);
    }
    hl_unlock();
    if (!r) {
        hl_record_gone(rec);
        return -1;
    }
    hl_log(2, "%s: %zu bytes on %s pages (%s) at %p, %.3f ms", what, len, hl_page_name[m->page],
           hl_origin_name[origin], m->p, ns / 1e6);
    return 0;
}

/* Both parts of a staged copy in mixed page sizes (map_parts), one region each, side by side:
 * each with its own release unit, and its own piece of the shadow (the file's map from the
 * part's offset on), so munmap, mremap, mprotect, advice and fork treat each part as they
 * treat a copy of its page size.  0, or -1 with both parts unmapped and nothing registered. */
static int add_parts(huge_map parts[2], size_t len, const char *what, uint64_t t0, int prot, unsigned fl,
                     uintptr_t shadow, int locked)
{
    size_t split = parts[0].maplen;
    if (add_region(&parts[0], split, ORIGIN_STAGED, what, t0, prot, fl, shadow, locked) == 0) {
        if (add_region(&parts[1], len - split, ORIGIN_STAGED, what, t0, prot, fl, shadow + split, locked) == 0)
            return 0;
        hl_lock();
        hl_region *r = hl_region_owner((uintptr_t)parts[0].p);
        if (r) {
            r->shadow = 0; /* the caller unmaps the shadow */
            hl_region_forget(r);
        }
        hl_unlock();
    }
    hl_os_unmap((uintptr_t)parts[0].p, split + parts[1].maplen);
    return -1;
}

static int selected(const char *path, const struct stat *st, size_t len, int staged, char *pat)
{
    if (!hl_have_files)
        return staged || ((size_t)st->st_size >= hl_min_file && len >= (size_t)st->st_size);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *s = hl_files;
    while (*s) {
        const char *c = strchr(s, ':');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        if (n > 0 && n + 2 < PATH_MAX) {
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

/* Opens one staged file: on hugetlbfs (its page size in *gran), root's and not group/other
 * writable, at least `need` bytes long; the fd, or -1 (logged once). */
static int open_staged(const char *staged, const char *what, size_t need, size_t *gran)
{
    int sfd = hl_os_open_ro(staged);
    if (sfd < 0) {
        hl_warn_once(R_STAGED, "staged copy %s of %s cannot be opened (%s): not redirected", staged, what,
                     strerror(errno));
        return -1;
    }
    struct stat sst;
    if ((unsigned long)hl_os_fs_type(sfd, gran) != HL_HUGETLBFS_MAGIC || hl_os_fstat(sfd, &sst) != 0) {
        hl_os_close(sfd);
        hl_warn_once(R_STAGED, "staged copy %s of %s is not on hugetlbfs: not redirected", staged, what);
        return -1;
    }
    if (!hl_trusted(&sst, staged, "staged copy")) {
        hl_os_close(sfd);
        return -1;
    }
    if (*gran < MB2 || !pow2(*gran) || (size_t)sst.st_size < round_up(need, *gran)) {
        hl_os_close(sfd);
        hl_warn_once(R_STAGED, "staged copy %s of %s is too small (%lld < %zu bytes): not redirected", staged, what,
                     (long long)sst.st_size, round_up(need, *gran));
        return -1;
    }
    return sfd;
}

/* A copy in mixed page sizes: its first part (`split` bytes, 1 GB pages) and its second part
 * side by side as one range, the first part aligned to its page size: a PROT_NONE reservation
 * one page longer than both, the parts mapped over it with MAP_FIXED, the rest given back. */
static int map_parts(size_t len, int prot, int flags, const struct stat *st, const hl_staged_copy *c, const char *what,
                     huge_map out[2])
{
    size_t g1 = 0, g2 = 0, split = c->split;
    int f1 = open_staged(c->path, what, split, &g1);
    if (f1 < 0)
        return -1;
    int f2 = open_staged(c->path2, what, (size_t)st->st_size - split, &g2);
    if (f2 < 0 || split % g1 || g2 > g1) {
        hl_os_close(f1);
        if (f2 >= 0)
            hl_os_close(f2);
        if (f2 >= 0)
            hl_warn_once(R_STAGED, "staged copy %s of %s is split at %zu, not a multiple of its page size: not "
                                   "redirected", c->path, what, split);
        return -1;
    }
    size_t len2 = round_up(len - split, g2), total = split + len2;
    int pr = prot & (PROT_READ | PROT_EXEC), fl = MAP_SHARED | MAP_FIXED | (flags & (MAP_POPULATE | MAP_NONBLOCK));
    void *res = hl_os_map_anon(NULL, total + g1, PROT_NONE, MAP_NORESERVE);
    uintptr_t a = res ? round_up((uintptr_t)res, g1) : 0;
    int e = res ? 0 : errno;
    if (res && (!hl_os_map_fd((void *)a, split, pr, fl, f1, 0) || !hl_os_map_fd((void *)(a + split), len2, pr, fl, f2, 0)))
        e = errno;
    hl_os_close(f1);
    hl_os_close(f2);
    if (e) {
        if (res)
            hl_os_unmap((uintptr_t)res, total + g1);
        hl_warn_once(R_STAGED, "mapping staged copy %s of %s failed (%s): not redirected", c->path, what, strerror(e));
        return -1;
    }
    if (a > (uintptr_t)res)
        hl_os_unmap((uintptr_t)res, a - (uintptr_t)res);
    if ((uintptr_t)res + total + g1 > a + total)
        hl_os_unmap(a + total, (uintptr_t)res + total + g1 - (a + total));
    out[0] = (huge_map){(void *)a, split, g1, g1 == GB1 ? PAGE_1G : PAGE_2M, -1};
    out[1] = (huge_map){(void *)(a + split), len2, g2, g2 == GB1 ? PAGE_1G : PAGE_2M, -1};
    return 0;
}

/* The staged copy `c` of the file (one part, or two: map_parts); the number of parts in out, or -1. */
static int map_staged(size_t len, int prot, int flags, const struct stat *st, const hl_staged_copy *c, const char *what,
                      huge_map out[2])
{
    if (c->split && len > c->split)
        return map_parts(len, prot, flags, st, c, what, out) == 0 ? 2 : -1;
    size_t gran = 0; /* the program maps no byte of a second part: the first one alone */
    int sfd = open_staged(c->path, what, c->split ? len : max_sz(len, (size_t)st->st_size), &gran);
    if (sfd < 0)
        return -1;
    size_t maplen = round_up(len, gran);
    void *p = hl_os_map_fd(NULL, maplen, prot & (PROT_READ | PROT_EXEC),
                           MAP_SHARED | (flags & (MAP_POPULATE | MAP_NONBLOCK)), sfd, 0);
    int e = errno;
    hl_os_close(sfd);
    if (!p) {
        hl_warn_once(R_STAGED, "mapping staged copy %s of %s failed (%s): not redirected", c->path, what,
                     strerror(e));
        return -1;
    }
    out[0] = (huge_map){p, maplen, gran, gran == GB1 ? PAGE_1G : PAGE_2M, -1};
    return 1;
}

typedef struct {
    int fd;
    char *dst;
    size_t total;
    atomic_size_t next;
    atomic_int err;
} hl_fill_job;
#define FILL_CHUNK ((size_t)32 << 20)

static void fill_worker(void *arg)
{
    hl_fill_job *j = *(hl_fill_job **)arg;
    for (;;) {
        size_t off = atomic_fetch_add(&j->next, FILL_CHUNK);
        if (off >= j->total || atomic_load(&j->err))
            break;
        size_t n = min_sz(FILL_CHUNK, j->total - off);
        ssize_t r;
        if (FAULT(F_PREAD | F_EOF) && off + n >= j->total / 2) {
            r = FAULT(F_PREAD) ? -1 : 0;
            errno = EIO;
        } else {
            r = hl_os_read_all(j->fd, j->dst + off, n, (off_t)off);
        }
        if (r != (ssize_t)n) {
            int e = r < 0 ? errno : ENODATA; /* short: the file shrank */
            int zero = 0;
            atomic_compare_exchange_strong(&j->err, &zero, e);
            return;
        }
    }
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
    if (nt > 16)
        nt = 16;
    hl_fill_job *ptrs[16];
    for (int i = 0; i < 16; i++)
        ptrs[i] = &j;
    hl_os_parallel(fill_worker, ptrs, sizeof ptrs[0], nt < 1 ? 1 : nt);
    return atomic_load(&j.err);
}

static int map_copy(size_t len, int prot, int fd, const struct stat *st, const char *what, huge_map *out)
{
    hl_anon a;
    if (!hl_anon_huge(len, 0, what, 1, &a))
        return -1;
    int e = fill(fd, a.p, min_sz(len, (size_t)st->st_size));
    if (!e && prot != (PROT_READ | PROT_WRITE) && hl_os_protect((uintptr_t)a.p, a.maplen, prot) != 0)
        e = errno;
    if (e) {
        hl_os_unmap((uintptr_t)a.p, a.maplen);
        if (a.fd >= 0)
            hl_os_close(a.fd);
        hl_warn_once(R_READ, "reading %s for its huge page copy failed (%s): using the real mmap", what,
                     e == ENODATA ? "file shorter than its size" : strerror(e));
        return -1;
    }
    if (a.fd >= 0)
        hl_os_close(a.fd); /* the map keeps the memfd alive */
    *out = (huge_map){a.p, a.maplen, a.unit, a.page, a.fd};
    return 0;
}

/* The program maps a hugetlbfs file itself. */
static void *map_hugetlbfs(size_t len, int prot, int flags, int fd, off_t off, size_t gran, scratch_t *sc)
{
    uint64_t t0 = hl_now_ns();
    void *p = NULL;
    if ((flags & MAP_TYPE) == MAP_PRIVATE && !(prot & PROT_WRITE)) {
        int rfd = hl_os_reopen_ro(fd);
        if (rfd >= 0) {
            p = hl_os_map_fd(NULL, len, prot, (flags & ~MAP_TYPE) | MAP_SHARED, rfd, off);
            hl_os_close(rfd);
        }
    }
    if (!p)
        p = hl_os_map_fd(NULL, len, prot, flags, fd, off);
    if (!p)
        return MAP_FAILED;
    if (gran < MB2 || !pow2(gran) || ((uintptr_t)p & (gran - 1)))
        return p;
    hl_os_fd_path(fd, sc->path, sizeof sc->path);
    hl_encode_what(sc->path, sc->what, sizeof sc->what);
    huge_map m = {p, round_up(len, gran), gran, gran == GB1 ? PAGE_1G : PAGE_2M, -1};
    unsigned fl = (flags & MAP_TYPE) == MAP_PRIVATE ? HL_RF_PRIVATE_REF : 0;
    add_region(&m, len, ORIGIN_DIRECT, sc->what, t0, prot, fl, 0, 0);
    return p;
}

static void *real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *p = r_mmap(addr, len, prot, flags, fd, off);
    return p;
}

void *hl_mmap_file(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    struct stat st;
    int acc = hl_os_accmode(fd);
    if (acc < 0 || acc == O_PATH || acc == O_WRONLY || hl_os_fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return real_mmap(addr, len, prot, flags, fd, off); /* the kernel's answer, refusals included */
    size_t gran = 0;
    long fstype = hl_os_fs_type(fd, &gran);
    int type = flags & MAP_TYPE, writable = prot & PROT_WRITE;
    if ((unsigned long)fstype != HL_HUGETLBFS_MAGIC &&
        (off != 0 || len < MB2 || len > round_up((size_t)st.st_size, KB4) || (type != MAP_SHARED && type != MAP_PRIVATE) ||
         (flags & ~(MAP_TYPE | MAP_POPULATE | MAP_NORESERVE | MAP_LOCKED | MAP_NONBLOCK)) ||
         (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) || (type == MAP_SHARED && (writable || acc != O_RDONLY))))
        return real_mmap(addr, len, prot, flags, fd, off);
    scratch_t *sc = hl_mem_alloc(sizeof *sc);
    if (!sc)
        return real_mmap(addr, len, prot, flags, fd, off);
    if ((unsigned long)fstype == HL_HUGETLBFS_MAGIC) {
        void *p = map_hugetlbfs(len, prot, flags, fd, off, gran, sc);
        hl_mem_free(sc, sizeof *sc);
        return p;
    }
    hl_staged_copy staged = {sc->staged, -1, sc->staged2, 0};
    hl_os_fd_path(fd, sc->path, sizeof sc->path);
    hl_encode_what(sc->path, sc->what, sizeof sc->what);
    int found = hl_index_lookup(&st, sc->what, &staged);
    int sel = selected(sc->path, &st, len, found, sc->pat);
    if (!sel || (!found && (type == MAP_SHARED || !hl_copy))) {
        if (sel && type == MAP_SHARED && hl_copy)
            hl_warn_once(R_SHARED, "%s is mapped shared: a copy would not see the file change; stage it "
                                   "(hugeload stage) to put it in huge pages", sc->what);
        else if (sel)
            hl_warn_once(R_NOTSTAGED, "%s is not staged and HUGELOAD_COPY is off: left on 4 KB pages", sc->what);
        void *p = real_mmap(addr, len, prot, flags, fd, off);
        if (p != MAP_FAILED && sel)
            hl_record(sc->what, len, len, PAGE_4K, ORIGIN_NONE, 0, (uintptr_t)p, 0);
        hl_mem_free(sc, sizeof *sc);
        return p;
    }
    /* The kernel's own map first: it accepts or refuses the call, and stays as the shadow.  It is
     * made inside a reservation as long as the huge span can be, so it never has to move. */
    uint64_t t0 = hl_now_ns();
    size_t shadow_len = round_up(len, found ? GB1 : hl_first_page(len, hl_page_size, &hl_pol)); /* staged: any page */
    void *shadow = hl_os_map_anon(NULL, shadow_len, PROT_NONE, MAP_NORESERVE);
    if (!shadow || r_mmap(shadow, len, prot, (flags & ~(MAP_POPULATE | MAP_LOCKED | MAP_NONBLOCK)) | MAP_FIXED, fd,
                          off) != shadow) {
        int e = errno;
        if (shadow)
            hl_os_unmap((uintptr_t)shadow, shadow_len);
        hl_mem_free(sc, sizeof *sc);
        errno = e;
        return MAP_FAILED;
    }
    hl_os_protect((uintptr_t)shadow, round_up(len, KB4), PROT_NONE);
    huge_map m, parts[2];
    int ok = 0, origin = ORIGIN_COPY, n = 1;
    unsigned fl = type == MAP_PRIVATE ? HL_RF_PRIVATE_REF : 0;
    if (found && type == MAP_PRIVATE && writable)
        hl_warn_once(R_PRIVW, "%s is mapped writable and private: not redirected to its staged copy", sc->what);
    else if (found && (n = map_staged(len, prot, flags, &st, &staged, sc->what, parts)) > 0)
        ok = 1, origin = ORIGIN_STAGED, m = parts[0];
    if (!ok && hl_copy && type == MAP_PRIVATE && map_copy(len, prot, fd, &st, sc->what, &m) == 0) {
        ok = 1, origin = ORIGIN_COPY, n = 1;
        fl |= m.fd >= 0 ? HL_RF_SHARED : 0;
    }
    size_t total = ok ? m.maplen + (n == 2 ? parts[1].maplen : 0) : 0;
    if (ok && total < shadow_len) { /* smaller pages than the first try: the rest is not needed */
        hl_os_unmap((uintptr_t)shadow + total, shadow_len - total);
        shadow_len = total;
    }
    if (ok) { /* the shadow covers the whole huge span, so any unit can be handed back */
        int locked = (flags & MAP_LOCKED) != 0;
        if (total > shadow_len) {
            hl_os_unmap((uintptr_t)m.p, total);
            ok = 0;
        } else if (n == 2) {
            ok = add_parts(parts, len, sc->what, t0, prot, fl, (uintptr_t)shadow, locked) == 0;
        } else if (add_region(&m, len, origin, sc->what, t0, prot, fl, (uintptr_t)shadow, locked) != 0) {
            hl_os_unmap((uintptr_t)m.p, m.maplen);
            ok = 0;
        }
    }
    if (ok) {
        hl_mem_free(sc, sizeof *sc);
        return m.p;
    }
    hl_os_unmap((uintptr_t)shadow, shadow_len);
    void *p = real_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED)
        hl_record(sc->what, len, len, PAGE_4K, ORIGIN_NONE, 0, (uintptr_t)p, 0);
    hl_mem_free(sc, sizeof *sc);
    return p;
}
