/*
 * The differential tester's program: runs one call sequence and prints what
 * it observes, the same way with and without the preload library.  Built and
 * driven by tests/difftest/difftest.py, which generates the sequences and
 * compares the two outputs.
 *
 *   prog DIR OPS       DIR: an empty directory for the files; OPS: the sequence
 *
 * One op per line (# starts a comment).  S is a slot 0..31 (a mapping or an
 * allocation, known by its slot, never by its address), F a file 0..3
 * (DIR/fF.dat), sizes and offsets in bytes, PROT a subset of "rwx" or "-",
 * TYPE "sh" or "pr":
 *   file F SIZE                 (re)create F with SIZE bytes of a pattern, open O_RDWR
 *   open F MODE                 MODE ro|rw|wo|path; prints the fd number
 *   close F | pwrite F OFF LEN VAL | ftruncate F SIZE
 *   mmap S F LEN PROT TYPE FOFF | anon S LEN PROT TYPE
 *   fixed S OFF LEN PROT TYPE [F FOFF]     MAP_FIXED inside S's span
 *   noreplace S OFF LEN         munmap, then MAP_FIXED_NOREPLACE anon rw there
 *   munmap|mlock|munlock S OFF LEN | mprotect S OFF LEN PROT
 *   madvise|pmadvise S OFF LEN ADV | msync S OFF LEN FLAGS(as|ss|inv)
 *   mremap S NEWLEN FLAGS       FLAGS: 0|maymove: S's whole span
 *   regrow S HALF               mremap to HALF bytes, then back, without MAYMOVE
 *   mremap_to S T OFF           S's span moved onto T's span at OFF (MREMAP_FIXED)
 *   malloc|calloc S N | memalign S ALIGN N [HOW] | realloc S N [array] | free S | usable S
 *                               HOW: posix (posix_memalign, the default)|aligned|memalign|
 *                               valloc|pvalloc; realloc ... array: reallocarray(p, 1, N)
 *   anon S LEN PROT TYPE 64     the same map through mmap64
 *   forkread S                  fork; the child reads S (and writes it if it can), exits
 *                               0 when it read what the parent had; the parent prints
 *                               the status (with small: the fork handlers on 16 KB)
 *   write S OFF LEN VAL | read S OFF LEN   (write skips bytes past the end of a file
 *                               mapped shared: see writable_in_page)
 *   fork ... endfork [CODE]     the ops in between run in a child (and are printed
 *                               with "child" before them); the parent prints the status
 *   raise SIG                   in a child: raise(SIG); the parent prints the status
 *   cancel OP...                OP runs in a thread whose cancellation is already
 *                               pending (deferred); prints whether OP finished
 *   small OP...                 OP runs in a thread with a 16 KB stack
 *   stderr F                    close(2), then open F: the program's data file is fd 2
 *   sigquery                    SIGUSR1's disposition
 *   obs                         observe every slot and file now
 *   taint S                     from here on S's contents are unspecified (MADV_FREE,
 *                               a file changed under a private map): printed, and the
 *                               comparison masks them
 *   forget S [OFF LEN]          S (or part of its span) is no longer the program's: it
 *                               unmapped it and something else may have been mapped
 *                               there since; not observed any more ('x')
 * After each op: "op N <op> -> <results>" (errno is the value after the call,
 * set to 777 before it), then "obs S ..." for each slot the op named: the span
 * in 4 KB pages, each page's state ('.' unmapped, 'B' past the end of its
 * file, else the protection 0-7), a hash of each readable page, and for pages
 * in a hugetlb mapping the huge page they lie in (how the comparison knows a
 * 4 KB piece that cannot leave its huge page).  Files: "file F size hashes".
 * Nothing here prints an address.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#define PG 4096UL
#define NSLOT 32
#define NFILE 4
#define MAXOPS 4096
#define SENTINEL 777

enum { K_NONE, K_MAP, K_MALLOC };

#define NFORGET 32
typedef struct {
    int kind;
    char *base;
    size_t len;
    int tainted;
    int nforget; /* ranges of the span that are no longer the program's (something else may live there) */
    size_t forget_off[NFORGET], forget_len[NFORGET];
} slot_t;

static int forgotten(const slot_t *sl, size_t off)
{
    for (int i = 0; i < sl->nforget; i++)
        if (off >= sl->forget_off[i] && off < sl->forget_off[i] + sl->forget_len[i])
            return 1;
    return 0;
}

static slot_t slots[NSLOT];
static int fds[NFILE] = {-1, -1, -1, -1};
static const char *dir;
static int in_child;

typedef struct {
    char *argv[16];
    int argc;
    int line;
} op_t;
static op_t ops[MAXOPS];
static int nops;

/* ---- helpers ---------------------------------------------------------- */

static void path_of(int f, char *out, size_t n) { snprintf(out, n, "%s/f%d.dat", dir, f); }

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static unsigned char pattern(int f, size_t off) { return (unsigned char)((off * 2654435761u >> 13) ^ (f * 97) ^ (off >> 12)); }

static int parse_prot(const char *s)
{
    int p = 0;
    for (; *s; s++)
        p |= *s == 'r' ? PROT_READ : *s == 'w' ? PROT_WRITE : *s == 'x' ? PROT_EXEC : 0;
    return p;
}

static size_t num(const char *s) { return strtoull(s, NULL, 0); }

/* ---- the address space as the kernel shows it --------------------------- */

typedef struct {
    uintptr_t a, b;
    int prot, shared, hugetlb, shift;
    unsigned long long ino, off;
} vma_t;
static vma_t vmas[8192];
static int nvma;
static char mapsbuf[4 << 20];

static void read_maps(void)
{
    nvma = 0;
    int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd, mapsbuf + got, sizeof mapsbuf - 1 - got)) > 0)
        got += (size_t)r;
    close(fd);
    mapsbuf[got] = 0;
    for (char *line = mapsbuf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        unsigned long a, b, off, ino;
        char perm[8];
        unsigned dmaj, dmin;
        long kb;
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &a, &b, perm, &off, &dmaj, &dmin, &ino) == 7 &&
            nvma < (int)(sizeof vmas / sizeof *vmas)) {
            vma_t *v = &vmas[nvma++];
            v->a = a, v->b = b, v->off = off, v->ino = ino;
            v->prot = (perm[0] == 'r' ? 1 : 0) | (perm[1] == 'w' ? 2 : 0) | (perm[2] == 'x' ? 4 : 0);
            v->shared = perm[3] == 's';
            v->hugetlb = 0, v->shift = 12;
        } else if (nvma && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1 && kb > 4) {
            vmas[nvma - 1].hugetlb = 1;
            vmas[nvma - 1].shift = kb == 1048576 ? 30 : 21;
        }
        line = nl ? nl + 1 : NULL;
    }
}

static const vma_t *vma_at(uintptr_t x)
{
    int lo = 0, hi = nvma - 1;
    while (lo <= hi) {
        int m = (lo + hi) / 2;
        if (x < vmas[m].a)
            hi = m - 1;
        else if (x >= vmas[m].b)
            lo = m + 1;
        else
            return &vmas[m];
    }
    return NULL;
}

/* Every file the program made, old generations too (a map keeps a replaced file): by inode. */
#define MAXGEN 256
static unsigned long long file_ino[MAXGEN];
static long long file_size[MAXGEN];
static char file_path[MAXGEN][32];
static int ngen;

static void refresh_files(void)
{
    for (int g = 0; g < ngen; g++) {
        struct stat st;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", dir, file_path[g]);
        file_size[g] = stat(p, &st) == 0 ? st.st_size : -1;
    }
}

/* State of the page at x: -1 unmapped, -2 past the end of its file, else its protection. */
static int page_state(uintptr_t x, int *group_shift)
{
    const vma_t *v = vma_at(x);
    *group_shift = 0;
    if (!v)
        return -1;
    for (int f = 0; f < ngen; f++)
        if (v->ino && v->ino == file_ino[f] && !v->hugetlb) {
            unsigned long long foff = v->off + (x - v->a);
            if ((long long)foff >= (long long)((file_size[f] + PG - 1) & ~(PG - 1)))
                return -2;
        }
    if (v->hugetlb)
        *group_shift = v->shift;
    return v->prot;
}

/* How many bytes from the start of the page at x the program writes.  Past the end of a file
 * mapped shared the kernel promises nothing: POSIX zero-fills that part of the last page at map
 * time and never writes it to the file; Linux keeps it in the page cache, where a private map of
 * the file made later shows it (and the library's private copy, read from the file, does not:
 * seed 1302, empty pools).  So the program leaves it alone, and the tail of a file's last page
 * stays the zeros every reading of the file agrees on. */
static size_t writable_in_page(uintptr_t x)
{
    const vma_t *v = vma_at(x);
    if (v && v->shared && v->ino && !v->hugetlb)
        for (int f = 0; f < ngen; f++)
            if (v->ino == file_ino[f]) {
                long long in = file_size[f] - (long long)(v->off + (x - v->a));
                return in <= 0 ? 0 : in < (long long)PG ? (size_t)in : PG;
            }
    return PG;
}

/* ---- observation -------------------------------------------------------- */

static char outbuf[1 << 22];

/* One run-length encoded field: "tok*count," per run of equal tokens. */
typedef struct {
    char *o;
    char prev[24];
    int cnt;
} rle_t;

static void rle_end(rle_t *r)
{
    if (r->cnt)
        r->o += sprintf(r->o, r->cnt > 1 ? "%s*%d," : "%s,", r->prev, r->cnt);
    r->cnt = 0;
}

static void rle_add(rle_t *r, const char *tok)
{
    if (r->cnt && !strcmp(tok, r->prev)) {
        r->cnt++;
        return;
    }
    rle_end(r);
    snprintf(r->prev, sizeof r->prev, "%s", tok);
    r->cnt = 1;
}

static void observe_slot(int s)
{
    slot_t *sl = &slots[s];
    if (sl->kind == K_NONE) {
        printf("obs %d none\n", s);
        return;
    }
    size_t n = (sl->len + PG - 1) / PG;
    rle_t rl = {.o = outbuf};
    rl.o += sprintf(rl.o, "obs %d len=%zu%s st=", s, sl->len, sl->tainted ? " tainted" : "");
    /* states */
    char cur[24];
    for (size_t i = 0; i < n; i++) {
        uintptr_t x = (uintptr_t)sl->base + i * PG;
        int gs, st = 0, st2 = 0;
        if (forgotten(sl, i * PG)) {
            st = -3;
        } else if (sl->kind == K_MALLOC) {
            st = page_state(x & ~(PG - 1), &gs);
            uintptr_t last = x + PG - 1 < (uintptr_t)sl->base + sl->len ? x + PG - 1 : (uintptr_t)sl->base + sl->len - 1;
            st2 = page_state(last & ~(PG - 1), &gs);
            if (st2 != st)
                st = st < 0 ? st : st2 < 0 ? st2 : (st & st2);
        } else {
            st = page_state(x, &gs);
        }
        snprintf(cur, sizeof cur, "%c", st == -1 ? '.' : st == -2 ? 'B' : st == -3 ? 'x' : '0' + st);
        rle_add(&rl, cur);
    }
    rle_end(&rl);
    /* hugetlb groups: the huge page each page lies in, numbered from 1 in this span */
    rl.o += sprintf(rl.o, " huge=");
    uintptr_t first_group = 0;
    for (size_t i = 0; i < n; i++) {
        uintptr_t x = (uintptr_t)sl->base + i * PG;
        int gs;
        int st = forgotten(sl, i * PG) ? -3 : page_state(x, &gs);
        if (st >= 0 && gs) {
            uintptr_t g = x >> gs;
            if (!first_group)
                first_group = g;
            snprintf(cur, sizeof cur, "%lu", (unsigned long)(g - first_group + 1));
        } else {
            strcpy(cur, "0");
        }
        rle_add(&rl, cur);
    }
    rle_end(&rl);
    /* contents of readable pages */
    rl.o += sprintf(rl.o, " hash=");
    for (size_t i = 0; i < n; i++) {
        uintptr_t x = (uintptr_t)sl->base + i * PG;
        size_t len = sl->len - i * PG < PG ? sl->len - i * PG : PG;
        int gs, st = page_state(x & ~(PG - 1), &gs), st2 = page_state((x + len - 1) & ~(PG - 1), &gs);
        if (!forgotten(sl, i * PG) && st >= 0 && st2 >= 0 && (st & st2 & 1))
            snprintf(cur, sizeof cur, "%016llx", (unsigned long long)fnv((unsigned char *)x, len));
        else
            strcpy(cur, "-");
        rle_add(&rl, cur);
    }
    rle_end(&rl);
    printf("%s%s\n", in_child ? "child " : "", outbuf);
}

static void observe_file(int f)
{
    char p[512];
    path_of(f, p, sizeof p);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("%sfile %d none\n", in_child ? "child " : "", f);
        return;
    }
    static unsigned char buf[PG];
    rle_t rl = {.o = outbuf};
    struct stat st;
    fstat(fd, &st);
    rl.o += sprintf(rl.o, "file %d size=%lld hash=", f, (long long)st.st_size);
    char cur[24];
    for (off_t off = 0;; off += PG) {
        ssize_t r = pread(fd, buf, PG, off);
        if (r <= 0)
            break;
        snprintf(cur, sizeof cur, "%016llx", (unsigned long long)fnv(buf, (size_t)r));
        rle_add(&rl, cur);
    }
    rle_end(&rl);
    close(fd);
    printf("%s%s\n", in_child ? "child " : "", outbuf);
}

static void observe_all(void)
{
    read_maps();
    refresh_files();
    for (int s = 0; s < NSLOT; s++)
        if (slots[s].kind != K_NONE)
            observe_slot(s);
    for (int f = 0; f < NFILE; f++)
        observe_file(f);
}

/* ---- executing one op: what a thread with a small stack can do ----------- */

typedef struct {
    const op_t *op;
    long ret, ret2;
    int err, err2;
    int done;
    char note[64];
} result_t;

static int slot_ok(int s) { return s >= 0 && s < NSLOT; }

static void init_fill(unsigned char *p, size_t from, size_t to, int s)
{
    for (size_t i = from; i < to; i++)
        p[i] = (unsigned char)(i * 31 + s);
}

static int advice(const char *s)
{
    return (int)strtol(s, NULL, 0);
}

/* Whether [p, p+len) is all mapped with prot bits `need` (not past a file's end). */
static int accessible(uintptr_t p, size_t len, int need)
{
    for (uintptr_t x = p & ~(PG - 1); x < p + len; x += PG) {
        int gs, st = page_state(x, &gs);
        if (st < 0 || (st & need) != need)
            return 0;
    }
    return 1;
}

static void exec_op(result_t *r)
{
    const op_t *op = r->op;
    char *const *a = op->argv;
    const char *name = a[0];
    int s = op->argc > 1 ? atoi(a[1]) : -1;
    r->ret = 0, r->ret2 = 0;
    errno = SENTINEL;
#define SAVE(expr)                                                                                                    \
    do {                                                                                                              \
        errno = SENTINEL;                                                                                             \
        r->ret = (long)(expr);                                                                                        \
        r->err = errno;                                                                                               \
    } while (0)
    if (!strcmp(name, "mmap") && op->argc == 7 && slot_ok(s)) {
        int f = atoi(a[2]);
        size_t len = num(a[3]);
        int type = !strcmp(a[5], "sh") ? MAP_SHARED : MAP_PRIVATE;
        void *p;
        errno = SENTINEL;
        p = mmap(NULL, len, parse_prot(a[4]), type, fds[f], (off_t)num(a[6]));
        r->err = errno;
        r->ret = p == MAP_FAILED ? -1 : 0;
        if (p != MAP_FAILED)
            slots[s] = (slot_t){.kind = K_MAP, .base = p, .len = len};
    } else if (!strcmp(name, "anon") && (op->argc == 5 || op->argc == 6) && slot_ok(s)) {
        size_t len = num(a[2]);
        int type = !strcmp(a[4], "sh") ? MAP_SHARED : MAP_PRIVATE;
        errno = SENTINEL;
        void *p = op->argc == 6 ? mmap64(NULL, len, parse_prot(a[3]), type | MAP_ANONYMOUS, -1, 0)
                                : mmap(NULL, len, parse_prot(a[3]), type | MAP_ANONYMOUS, -1, 0);
        r->err = errno;
        r->ret = p == MAP_FAILED ? -1 : 0;
        if (p != MAP_FAILED)
            slots[s] = (slot_t){.kind = K_MAP, .base = p, .len = len};
    } else if (!strcmp(name, "fixed") && (op->argc == 6 || op->argc == 8) && slot_ok(s) && slots[s].kind == K_MAP) {
        char *at = slots[s].base + num(a[2]);
        int type = !strcmp(a[5], "sh") ? MAP_SHARED : MAP_PRIVATE;
        int fd = -1;
        off_t foff = 0;
        if (op->argc == 8)
            fd = fds[atoi(a[6])], foff = (off_t)num(a[7]);
        else
            type |= MAP_ANONYMOUS;
        errno = SENTINEL;
        void *p = mmap(at, num(a[3]), parse_prot(a[4]), type | MAP_FIXED, fd, foff);
        r->err = errno;
        r->ret = p == MAP_FAILED ? -1 : p == at ? 0 : 1;
    } else if (!strcmp(name, "noreplace") && op->argc == 4 && slot_ok(s) && slots[s].kind == K_MAP) {
        char *at = slots[s].base + num(a[2]);
        size_t len = num(a[3]);
        SAVE(munmap(at, len));
        errno = SENTINEL;
        void *p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        r->err2 = errno;
        r->ret2 = p == MAP_FAILED ? -1 : p == at ? 0 : 1;
    } else if ((!strcmp(name, "munmap") || !strcmp(name, "mlock") || !strcmp(name, "munlock")) && op->argc == 4 &&
               slot_ok(s) && slots[s].kind != K_NONE) {
        char *at = slots[s].base + num(a[2]);
        size_t len = num(a[3]);
        if (name[1] == 'u' && name[2] == 'n' && name[3] == 'm')
            SAVE(munmap(at, len));
        else if (name[1] == 'l')
            SAVE(mlock(at, len));
        else
            SAVE(munlock(at, len));
    } else if (!strcmp(name, "mprotect") && op->argc == 5 && slot_ok(s) && slots[s].kind != K_NONE) {
        SAVE(mprotect(slots[s].base + num(a[2]), num(a[3]), parse_prot(a[4])));
    } else if (!strcmp(name, "madvise") && op->argc == 5 && slot_ok(s) && slots[s].kind != K_NONE) {
        SAVE(madvise(slots[s].base + num(a[2]), num(a[3]), advice(a[4])));
    } else if (!strcmp(name, "pmadvise") && op->argc == 5 && slot_ok(s) && slots[s].kind != K_NONE) {
        SAVE(posix_madvise(slots[s].base + num(a[2]), num(a[3]), advice(a[4])));
    } else if (!strcmp(name, "msync") && op->argc == 5 && slot_ok(s) && slots[s].kind != K_NONE) {
        int fl = !strcmp(a[4], "ss") ? MS_SYNC : !strcmp(a[4], "inv") ? MS_INVALIDATE : MS_ASYNC;
        SAVE(msync(slots[s].base + num(a[2]), num(a[3]), fl));
    } else if (!strcmp(name, "mremap") && op->argc == 4 && slot_ok(s) && slots[s].kind == K_MAP) {
        size_t nl = num(a[2]);
        int fl = !strcmp(a[3], "maymove") ? MREMAP_MAYMOVE : 0;
        errno = SENTINEL;
        void *p = mremap(slots[s].base, slots[s].len, nl, fl);
        r->err = errno;
        r->ret = p == MAP_FAILED ? -1 : (fl & MREMAP_MAYMOVE) ? 0 : p == slots[s].base ? 0 : 1; /* moved or not: layout */
        if (p != MAP_FAILED)
            slots[s].base = p, slots[s].len = nl;
    } else if (!strcmp(name, "regrow") && op->argc == 3 && slot_ok(s) && slots[s].kind == K_MAP) {
        size_t half = num(a[2]);
        errno = SENTINEL;
        void *p = mremap(slots[s].base, slots[s].len, half, 0);
        r->err = errno;
        r->ret = p == MAP_FAILED ? -1 : p == slots[s].base ? 0 : 1;
        errno = SENTINEL;
        void *q = p == MAP_FAILED ? MAP_FAILED : mremap(slots[s].base, half, slots[s].len, 0);
        r->err2 = errno;
        r->ret2 = q == MAP_FAILED ? -1 : q == slots[s].base ? 0 : 1;
        if (p != MAP_FAILED && q == MAP_FAILED)
            slots[s].len = half;
    } else if (!strcmp(name, "mremap_to") && op->argc == 4 && slot_ok(s) && slot_ok(atoi(a[2])) &&
               slots[s].kind == K_MAP && slots[atoi(a[2])].kind == K_MAP) {
        char *to = slots[atoi(a[2])].base + num(a[3]);
        errno = SENTINEL;
        void *p = mremap(slots[s].base, slots[s].len, slots[s].len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
        r->err = errno;
        r->ret = p == MAP_FAILED ? -1 : p == to ? 0 : 1;
        if (p != MAP_FAILED)
            slots[s].base = p;
    } else if ((!strcmp(name, "malloc") || !strcmp(name, "calloc")) && op->argc == 3 && slot_ok(s)) {
        size_t n = num(a[2]);
        errno = SENTINEL;
        void *p = name[0] == 'm' ? malloc(n) : calloc(1, n);
        r->err = errno;
        r->ret = p ? 0 : -1;
        if (p)
            slots[s] = (slot_t){.kind = K_MALLOC, .base = p, .len = n};
        if (p && name[0] == 'm')
            init_fill(p, 0, n, s); /* malloc's contents are unspecified: the program writes first */
    } else if (!strcmp(name, "memalign") && (op->argc == 4 || op->argc == 5) && slot_ok(s)) {
        size_t n = num(a[3]), al = num(a[2]);
        const char *how = op->argc == 5 ? a[4] : "posix";
        void *p = NULL;
        int rc;
        errno = SENTINEL;
        if (!strcmp(how, "posix"))
            rc = posix_memalign(&p, al, n);
        else {
            if (!strcmp(how, "aligned"))
                p = aligned_alloc(al, n);
            else if (!strcmp(how, "memalign"))
                p = memalign(al, n);
            else if (!strcmp(how, "valloc"))
                p = valloc(n);
            else
                p = pvalloc(n);
            rc = p ? 0 : -1;
        }
        r->err = errno;
        r->ret = rc;
        if (!rc) {
            slots[s] = (slot_t){.kind = K_MALLOC, .base = p, .len = n};
            init_fill(p, 0, n, s);
        }
    } else if (!strcmp(name, "realloc") && (op->argc == 3 || op->argc == 4) && slot_ok(s) &&
               slots[s].kind == K_MALLOC) {
        size_t n = num(a[2]);
        errno = SENTINEL;
        size_t was = slots[s].len;
        void *p = op->argc == 4 ? reallocarray(slots[s].base, 1, n) : realloc(slots[s].base, n);
        r->err = errno;
        r->ret = p ? 0 : -1;
        if (p && n > was)
            init_fill(p, was, n, s); /* what realloc added is unspecified too */
        if (p)
            slots[s].base = p, slots[s].len = n;
        else if (n == 0)
            slots[s].kind = K_NONE;
    } else if (!strcmp(name, "free") && op->argc == 2 && slot_ok(s) && slots[s].kind == K_MALLOC) {
        errno = SENTINEL;
        free(slots[s].base);
        r->err = errno;
        slots[s].kind = K_NONE;
    } else if (!strcmp(name, "usable") && op->argc == 2 && slot_ok(s) && slots[s].kind == K_MALLOC) {
        errno = SENTINEL;
        r->ret = malloc_usable_size(slots[s].base) >= slots[s].len;
        r->err = errno;
    } else if (!strcmp(name, "forkread") && op->argc == 2 && slot_ok(s) && slots[s].kind != K_NONE) {
        /* The library's fork handlers run on this thread's stack, in the parent and in the child. */
        unsigned char *p = (unsigned char *)slots[s].base;
        size_t len = slots[s].len < PG ? slots[s].len : PG;
        int rd = len && accessible((uintptr_t)p, len, 1), wr = rd && accessible((uintptr_t)p, len, 3);
        uint64_t want = rd ? fnv(p, len) : 0;
        errno = SENTINEL;
        pid_t pid = fork();
        if (pid == 0) {
            int ok = !rd || fnv(p, len) == want;
            if (wr)
                p[0] ^= 0x5a; /* the child's write stays the child's */
            _exit(ok ? 0 : 1);
        }
        r->err = errno;
        int st = 0;
        if (pid > 0 && waitpid(pid, &st, 0) == pid)
            r->ret = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        else
            r->ret = -1;
        if (rd)
            snprintf(r->note, sizeof r->note, "%d", fnv(p, len) == want); /* the parent's bytes kept */
    } else if ((!strcmp(name, "write") || !strcmp(name, "read")) && op->argc >= 4 && slot_ok(s) &&
               slots[s].kind != K_NONE) {
        size_t off = num(a[2]), len = num(a[3]);
        if (off > slots[s].len)
            off = slots[s].len;
        if (len > slots[s].len - off)
            len = slots[s].len - off;
        unsigned char *p = (unsigned char *)slots[s].base + off;
        if (!len) {
            r->ret = 0;
        } else if (!accessible((uintptr_t)p, len, name[0] == 'w' ? 3 : 1)) {
            r->ret = -1; /* the program would fault here: it does not touch it */
        } else if (name[0] == 'w') {
            unsigned v = (unsigned)num(a[4]);
            size_t keep = 0; /* of the page that p + i lies in, the bytes before the file's end */
            for (size_t i = 0; i < len; i++) {
                uintptr_t x = (uintptr_t)(p + i), in_page = x & (PG - 1);
                if (i == 0 || in_page == 0)
                    keep = writable_in_page(x - in_page);
                if (in_page < keep)
                    p[i] = (unsigned char)(v + (i >> 12) + i * 7);
            }
            r->ret = 1;
        } else {
            r->ret = 1; /* the contents, unless they are unspecified */
            snprintf(r->note, sizeof r->note, "%016llx", slots[s].tainted ? 0ull : (unsigned long long)fnv(p, len));
        }
    } else {
        r->ret = -100; /* not applicable here (a slot or file it names does not exist) */
    }
    r->done = 1;
}

/* ---- threads: pending cancellation, small stacks -------------------------- */

typedef struct {
    result_t *r;
    pthread_mutex_t m;
    pthread_cond_t c;
    int go;
    int cancel_first;
} tjob;

static void *thread_main(void *arg)
{
    tjob *j = arg;
    if (j->cancel_first) {
        int old;
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
        pthread_mutex_lock(&j->m);
        while (!j->go)
            pthread_cond_wait(&j->c, &j->m);
        pthread_mutex_unlock(&j->m);
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old); /* the cancel stays pending */
    }
    exec_op(j->r);
    if (j->cancel_first)
        pthread_testcancel();
    return NULL;
}

static void run_in_thread(result_t *r, int cancel, int small)
{
    tjob j = {.r = r, .cancel_first = cancel};
    pthread_mutex_init(&j.m, NULL);
    pthread_cond_init(&j.c, NULL);
    pthread_attr_t at;
    pthread_attr_init(&at);
    if (small) /* 16 KB; a cancellation needs the unwinder's few KB more */
        pthread_attr_setstacksize(&at, cancel ? 65536 : 16384);
    pthread_t t;
    if (pthread_create(&t, &at, thread_main, &j) != 0) {
        snprintf(r->note, sizeof r->note, "no-thread");
        return;
    }
    if (cancel) {
        pthread_cancel(t);
        pthread_mutex_lock(&j.m);
        j.go = 1;
        pthread_cond_signal(&j.c);
        pthread_mutex_unlock(&j.m);
    }
    void *rv;
    pthread_join(t, &rv);
    pthread_attr_destroy(&at);
    if (cancel)
        snprintf(r->note + strlen(r->note), sizeof r->note - strlen(r->note), "%scancelled=%d finished=%d",
                 r->note[0] ? " " : "", rv == PTHREAD_CANCELED, r->done);
}

/* ---- the ops that are not memory calls ------------------------------------ */

static void print_status(int status)
{
    if (WIFEXITED(status))
        printf("status exit=%d\n", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf("status signal=%d\n", WTERMSIG(status));
    else
        printf("status other\n");
}

static void mark_slots_of(const op_t *op, int *named)
{
    const char *n = op->argv[0];
    int first = 1, last = 1;
    if (!strcmp(n, "mremap_to"))
        last = 2;
    if (!strcmp(n, "file") || !strcmp(n, "open") || !strcmp(n, "close") || !strcmp(n, "pwrite") ||
        !strcmp(n, "ftruncate") || !strcmp(n, "stderr") || !strcmp(n, "obs") || !strcmp(n, "sigquery") ||
        !strcmp(n, "raise"))
        return;
    for (int i = first; i <= last && i < op->argc; i++) {
        int s = atoi(op->argv[i]);
        if (slot_ok(s))
            named[s] = 1;
    }
}

static int run_ops(int from, int to);

static int run_one(int i)
{
    const op_t *op = &ops[i];
    const char *name = op->argv[0];
    char *const *a = op->argv;
    int named[NSLOT] = {0};
    int files_changed = 0;
    const char *pre = in_child ? "child " : "";
    printf("%sop %d", pre, i);
    for (int k = 0; k < op->argc; k++)
        printf(" %s", a[k]);
    printf(" ->");
    if (!strcmp(name, "fork")) {
        int depth = 0, end = -1;
        for (int k = i + 1; k < nops; k++) {
            if (!strcmp(ops[k].argv[0], "fork"))
                depth++;
            else if (!strcmp(ops[k].argv[0], "endfork") && depth-- == 0) {
                end = k;
                break;
            }
        }
        if (end < 0) {
            printf(" unterminated\n");
            return nops;
        }
        printf("\n");
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            in_child = 1;
            run_ops(i + 1, end);
            observe_all();
            fflush(stdout);
            _exit(ops[end].argc > 1 ? atoi(ops[end].argv[1]) : 0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        printf("%s", pre);
        print_status(status);
        observe_all();
        return end + 1;
    }
    if (!strcmp(name, "raise") && op->argc == 2) {
        printf("\n");
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            raise(atoi(a[1]));
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        printf("%s", pre);
        print_status(status);
        return i + 1;
    }
    if (!strcmp(name, "sigquery")) {
        struct sigaction sa;
        sigaction(SIGUSR1, NULL, &sa);
        printf(" dfl=%d\n", !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL);
        return i + 1;
    }
    if (!strcmp(name, "obs")) {
        printf("\n");
        observe_all();
        return i + 1;
    }
    if (!strcmp(name, "taint") && op->argc == 2 && slot_ok(atoi(a[1]))) {
        slots[atoi(a[1])].tainted = 1;
        printf("\n");
        return i + 1;
    }
    if (!strcmp(name, "forget") && op->argc >= 2 && slot_ok(atoi(a[1]))) {
        slot_t *sl = &slots[atoi(a[1])];
        if (op->argc == 4 && sl->nforget < NFORGET) {
            sl->forget_off[sl->nforget] = num(a[2]), sl->forget_len[sl->nforget++] = num(a[3]);
        } else if (sl->kind == K_MAP) {
            sl->kind = K_NONE;
        }
        printf("\n");
        return i + 1;
    }
    if (!strcmp(name, "file") && op->argc == 3) {
        int f = atoi(a[1]);
        size_t size = num(a[2]);
        char p[512];
        path_of(f, p, sizeof p);
        if (fds[f] >= 0)
            close(fds[f]);
        char cur[64];
        snprintf(cur, sizeof cur, "f%d.dat", f);
        for (int g = 0; g < ngen; g++)
            if (!strcmp(file_path[g], cur)) { /* the old file stays, renamed, for the maps that keep it */
                char old[PATH_MAX];
                snprintf(file_path[g], sizeof file_path[g], "old%d", g);
                snprintf(old, sizeof old, "%.3000s/%.30s", dir, file_path[g]);
                rename(p, old);
            }
        unlink(p);
        int fd = open(p, O_RDWR | O_CREAT | O_EXCL, 0600);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && ngen < MAXGEN) {
            file_ino[ngen] = st.st_ino;
            snprintf(file_path[ngen], sizeof file_path[ngen], "f%d.dat", f);
            ngen++;
        }
        static unsigned char buf[1 << 16];
        for (size_t off = 0; off < size; off += sizeof buf) {
            size_t n = size - off < sizeof buf ? size - off : sizeof buf;
            for (size_t k = 0; k < n; k++)
                buf[k] = pattern(f, off + k);
            if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
                break;
        }
        fds[f] = fd;
        printf(" fd=%d\n", fd);
        observe_file(f);
        return i + 1;
    }
    if (!strcmp(name, "open") && op->argc == 3) {
        int f = atoi(a[1]);
        char p[512];
        path_of(f, p, sizeof p);
        if (fds[f] >= 0)
            close(fds[f]);
        int fl = !strcmp(a[2], "ro") ? O_RDONLY : !strcmp(a[2], "wo") ? O_WRONLY : !strcmp(a[2], "path") ? O_PATH : O_RDWR;
        errno = SENTINEL;
        fds[f] = open(p, fl);
        printf(" fd=%d errno=%d\n", fds[f], fds[f] < 0 ? errno : 0);
        return i + 1;
    }
    if (!strcmp(name, "close") && op->argc == 2) {
        int f = atoi(a[1]);
        int rc = fds[f] >= 0 ? close(fds[f]) : 0;
        fds[f] = -1;
        printf(" %d\n", rc);
        return i + 1;
    }
    if (!strcmp(name, "stderr") && op->argc == 2) {
        int f = atoi(a[1]);
        char p[512];
        path_of(f, p, sizeof p);
        close(2);
        int fd = open(p, O_RDWR | O_APPEND);
        printf(" fd=%d\n", fd);
        return i + 1;
    }
    if (!strcmp(name, "pwrite") && op->argc == 5) {
        int f = atoi(a[1]);
        size_t off = num(a[2]), len = num(a[3]);
        static unsigned char buf[1 << 20];
        if (len > sizeof buf)
            len = sizeof buf;
        memset(buf, (int)num(a[4]), len);
        errno = SENTINEL;
        ssize_t w = pwrite(fds[f], buf, len, (off_t)off);
        printf(" %zd errno=%d\n", w, w < 0 ? errno : 0);
        files_changed = 1;
        observe_file(f);
        (void)files_changed;
        return i + 1;
    }
    if (!strcmp(name, "ftruncate") && op->argc == 3) {
        int f = atoi(a[1]);
        errno = SENTINEL;
        int rc = ftruncate(fds[f], (off_t)num(a[2]));
        printf(" %d errno=%d\n", rc, rc ? errno : 0);
        observe_file(f);
        return i + 1;
    }
    /* memory ops, maybe in a thread */
    int cancel = 0, small = 0, k0 = 0;
    while (k0 < op->argc && (!strcmp(a[k0], "cancel") || !strcmp(a[k0], "small"))) {
        if (a[k0][0] == 'c')
            cancel = 1;
        else
            small = 1;
        k0++;
    }
    op_t inner = *op;
    inner.argc = op->argc - k0;
    for (int k = 0; k < inner.argc; k++)
        inner.argv[k] = op->argv[k0 + k];
    result_t r = {.op = &inner};
    read_maps();
    refresh_files();
    if (cancel || small)
        run_in_thread(&r, cancel, small);
    else
        exec_op(&r);
    /* errno means something only after a failure (POSIX); free() keeps it (glibc >= 2.33) */
    printf(" ret=%ld", r.ret);
    if (r.ret < 0 || !strcmp(inner.argv[0], "free"))
        printf(" errno=%d", r.err);
    if (r.ret2 || r.err2)
        printf(" ret2=%ld errno2=%d", r.ret2, r.ret2 < 0 ? r.err2 : 0);
    if (r.note[0])
        printf(" %s", r.note);
    printf("\n");
    mark_slots_of(&inner, named);
    read_maps();
    refresh_files();
    for (int s = 0; s < NSLOT; s++)
        if (named[s])
            observe_slot(s);
    if (!strcmp(inner.argv[0], "msync") || !strcmp(inner.argv[0], "fixed") || !strcmp(inner.argv[0], "munmap"))
        for (int f = 0; f < NFILE; f++)
            observe_file(f);
    return i + 1;
}

static int run_ops(int from, int to)
{
    for (int i = from; i < to;) {
        fflush(stdout);
        i = run_one(i);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: prog DIR OPS\n");
        return 2;
    }
    dir = argv[1];
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    int line = 0;
    for (char *s = text; s && *s && nops < MAXOPS;) {
        char *nl = strchr(s, '\n');
        if (nl)
            *nl = 0;
        line++;
        char *hash = strchr(s, '#');
        if (hash)
            *hash = 0;
        op_t *op = &ops[nops];
        op->argc = 0, op->line = line;
        for (char *tok = strtok(s, " \t"); tok && op->argc < 16; tok = strtok(NULL, " \t"))
            op->argv[op->argc++] = tok;
        if (op->argc)
            nops++;
        s = nl ? nl + 1 : NULL;
    }
    run_ops(0, nops);
    printf("end\n");
    observe_all();
    fflush(stdout);
    return 0;
}
