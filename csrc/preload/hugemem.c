/*
 * hugemem.c: anonymous huge memory, the 1 GB -> 2 MB -> THP cascade.
 *
 * The first size tried comes from policy.c (what Python decided).  A hugetlb
 * map is pre-faulted with MADV_POPULATE_WRITE before it is handed out, split
 * over up to HUGELOAD_FILL_THREADS threads (first touch of freshly reserved
 * huge pages is slow, ~0.4 GB/s on one thread here): a reservation can
 * succeed where the fault then fails (hugetlb cgroup limits, a NUMA
 * binding), and a failed populate is a fallback to the next size, where a
 * failed touch would have been a SIGBUS.  THP maps are not pre-faulted (a
 * failed THP fault falls back to 4 KB pages by itself).
 * THP maps are named "hugeload:<what>" (PR_SET_VMA_ANON_NAME); the kernel
 * refuses names on hugetlb maps (they are file-backed), so 2 MB ones stay
 * "/anon_hugepage (deleted)" in /proc/PID/maps.
 *
 * 1 GB pages come from a hugetlb memfd of our own ("/memfd:hugeload:<what>"),
 * mapped shared, not from MAP_PRIVATE|MAP_HUGETLB: kernel 6.18 here loses
 * the page-table entry of a private 1 GB page at fork in about half the
 * forks (scripts/repro/fork-1g.c shows it without hugeload; 2 MB pages never
 * did), so the child's first touch needs a new page and dies of SIGBUS when
 * the pool has none.  A shared mapping is not copied at fork: the child
 * faults its pages in from the memfd, which always works.  Nobody else maps
 * the memfd, so the program's memory stays its own; what fork would share,
 * the child's fork handler copies (alloc.c).  Giving a unit back punches it
 * out of the file (MADV_REMOVE) before the munmap (os.c).
 */
#include "hl.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#define HL_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#define HL_HUGE_1GB (30 << MAP_HUGE_SHIFT)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* One counter of a pool (free_hugepages, resv_hugepages), -1 when unreadable.  Read only after
 * a huge map failed: for a warning that will be written (hl_warn_wanted), or to size the 1 GB
 * part of an allocation the pool is short of (try_parts); never on every allocation. */
static long pool_count(size_t page, const char *field)
{
    char path[96];
    snprintf(path, sizeof path, "/sys/kernel/mm/hugepages/hugepages-%zukB/%s", page >> 10, field);
    return hl_os_read_long(path);
}

static long pool_free(size_t page) { return pool_count(page, "free_hugepages"); }

/* "hugeload:<what>" in what the kernel accepts as a VMA or memfd name:
 * printable characters except [ ] \ ` $ (and no '/', which memfd refuses). */
static void vma_name(char *name, size_t size, const char *what)
{
    snprintf(name, size, "hugeload:%s", what);
    for (char *c = name; *c; c++)
        if (*c < 0x21 || *c > 0x7e || strchr("[]\\`$/", *c))
            *c = '_';
}

typedef struct {
    char *p;
    size_t a, b;
    atomic_int *err;
} pop_slice;

static void pop_slice_run(void *arg)
{
    pop_slice *s = arg;
    int e = s->a < s->b ? hl_os_advise((uintptr_t)s->p + s->a, s->b - s->a, MADV_POPULATE_WRITE) : 0;
    if (e) {
        int zero = 0;
        atomic_compare_exchange_strong(s->err, &zero, e);
    }
}

int hl_populate(void *p, size_t len, size_t unit)
{
    if (FAULT(F_POPULATE))
        return EFAULT;
    atomic_int err;
    atomic_init(&err, 0);
    int nt = hl_fill_threads;
    size_t units = len / unit;
    if ((size_t)nt > units)
        nt = (int)units;
    if (len < ((size_t)64 << 20) || nt < 1)
        nt = 1;
    if (nt > 16)
        nt = 16;
    size_t per = round_up(len / (size_t)nt, unit);
    pop_slice sl[16];
    for (int i = 0; i < nt; i++)
        sl[i] = (pop_slice){p, min_sz(len, (size_t)i * per), i == nt - 1 ? len : min_sz(len, (size_t)(i + 1) * per),
                            &err};
    hl_os_parallel(pop_slice_run, sl, sizeof sl[0], nt);
    int e = atomic_load(&err);
    return e == EINVAL ? 0 : e; /* EINVAL: a kernel before 5.14 without populate; nothing checked */
}

/* hugetlb map of size rounded to pg, base aligned to max(pg, align): of the
 * memfd fd (shared) when fd >= 0, else anonymous private. */
static void *map_hugetlb(size_t size, size_t align, size_t pg, int hflag, int fd)
{
    size_t maplen = round_up(size, pg);
    int prot = PROT_READ | PROT_WRITE;
    if (align <= pg)
        return fd >= 0 ? hl_os_map_fd(NULL, maplen, prot, MAP_SHARED, fd, 0)
                       : hl_os_map_anon(NULL, maplen, prot, MAP_HUGETLB | hflag);
    /* Over-aligned: reserve address space, put the huge pages in at an aligned spot. */
    size_t span = maplen + align;
    char *res = hl_os_map_anon(NULL, span, PROT_NONE, MAP_NORESERVE);
    if (!res)
        return NULL;
    uintptr_t al = round_up((uintptr_t)res, align);
    void *p = fd >= 0 ? hl_os_map_fd((void *)al, maplen, prot, MAP_SHARED | MAP_FIXED, fd, 0)
                      : hl_os_map_anon((void *)al, maplen, prot, MAP_HUGETLB | hflag | MAP_FIXED);
    if (!p) {
        int e = errno;
        hl_os_unmap((uintptr_t)res, span);
        errno = e;
        return NULL;
    }
    if (al > (uintptr_t)res)
        hl_os_unmap((uintptr_t)res, al - (uintptr_t)res);
    uintptr_t tail = (uintptr_t)res + span, end = al + maplen;
    if (tail > end)
        hl_os_unmap(end, tail - end);
    return p;
}

static void *map_thp(size_t size, size_t align, const char *what)
{
    size_t maplen = round_up(size, MB2), a = max_sz(align, MB2), span = maplen + a;
    char *res = hl_os_map_anon(NULL, span, PROT_READ | PROT_WRITE, 0);
    if (!res)
        return NULL;
    uintptr_t al = round_up((uintptr_t)res, a), end = al + maplen, tail = (uintptr_t)res + span;
    if (al > (uintptr_t)res)
        hl_os_unmap((uintptr_t)res, al - (uintptr_t)res);
    if (tail > end)
        hl_os_unmap(end, tail - end);
    int e = hl_os_advise(al, maplen, MADV_HUGEPAGE);
    if (e) {
        hl_os_unmap(al, maplen);
        errno = e;
        return NULL;
    }
    char name[64];
    vma_name(name, sizeof name, what);
    hl_os_name((void *)al, maplen, name);
    return (void *)al;
}

/* One hugetlb try: map, then (if asked) pre-fault; 0 with *out set, or an errno value. */
static int try_hugetlb(size_t size, size_t align, size_t pg, int populate, const char *what, hl_anon *out)
{
    errno = ENOMEM;
    size_t maplen = round_up(size, pg);
    int fd = -1;
    void *p = NULL;
    if (!FAULT(pg == GB1 ? F_1G : F_2M)) {
        if (pg == GB1) {
            char name[64];
            vma_name(name, sizeof name, what);
            fd = hl_os_memfd_huge(name, maplen, 30);
        }
        if (pg != GB1 || fd >= 0)
            p = map_hugetlb(size, align, pg, pg == GB1 ? HL_HUGE_1GB : HL_HUGE_2MB, fd);
    }
    if (!p) {
        int e = errno;
        if (fd >= 0)
            hl_os_close(fd);
        return e;
    }
    uint64_t t0 = hl_now_ns();
    int e = populate ? hl_populate(p, maplen, pg) : 0;
    if (e) {
        hl_os_unmap((uintptr_t)p, maplen);
        if (fd >= 0)
            hl_os_close(fd);
        hl_warn_once(R_POPULATE, "pre-faulting %zu MB pages failed (%s): trying the next page size", pg >> 20,
                     strerror(e));
        return e;
    }
    *out = (hl_anon){p, maplen, pg, pg == GB1 ? PAGE_1G : PAGE_2M, hl_now_ns() - t0, fd};
    return 0;
}

/* Free 1 GB pages nobody has reserved yet (a shared map reserves at mmap, a fault takes one). */
static long pool_available_1g(void)
{
    long f = pool_free(GB1), r = pool_count(GB1, "resv_hugepages");
    return f < 0 ? 0 : r > 0 ? f - r : f;
}

/* The 1 GB pool holds some but fewer pages than `size` needs: its free pages for the first
 * GiBs and 2 MB pages for the rest, side by side in one range, the first part 1 GiB-aligned
 * (the layout of a staged copy in two parts, filemap.c): a PROT_NONE reservation one 1 GB page
 * longer than both, the parts mapped over it with MAP_FIXED, the rest given back.  Each part is
 * what a whole allocation of its page size would be (a memfd of ours mapped shared, then
 * private 2 MB hugetlb), so fork, munmap and advice treat it as they treat one.  0 with both
 * parts in out, or an errno value with nothing mapped. */
static int try_parts(size_t size, size_t align, int populate, const char *what, hl_anon out[2])
{
    size_t need = round_up(size, GB1) / GB1;
    long have = FAULT(F_1G) || FAULT(F_2M) ? 0 : pool_available_1g();
    if (need < 2 || have < 1)
        return ENOMEM;
    size_t head = min_sz((size_t)have, need - 1) * GB1, tail = round_up(size - head, MB2);
    size_t a = max_sz(align, GB1), span = head + tail + a;
    char name[64];
    vma_name(name, sizeof name, what);
    int fd = hl_os_memfd_huge(name, head, 30);
    if (fd < 0)
        return errno;
    char *res = hl_os_map_anon(NULL, span, PROT_NONE, MAP_NORESERVE);
    uintptr_t al = res ? round_up((uintptr_t)res, a) : 0, end = al + head + tail;
    int prot = PROT_READ | PROT_WRITE, e = 0;
    if (!res || !hl_os_map_fd((void *)al, head, prot, MAP_SHARED | MAP_FIXED, fd, 0) ||
        !hl_os_map_anon((void *)(al + head), tail, prot, MAP_HUGETLB | HL_HUGE_2MB | MAP_FIXED)) {
        e = errno;
        if (res)
            hl_os_unmap((uintptr_t)res, span);
        hl_os_close(fd);
        return e;
    }
    if (al > (uintptr_t)res)
        hl_os_unmap((uintptr_t)res, al - (uintptr_t)res);
    if ((uintptr_t)res + span > end)
        hl_os_unmap(end, (uintptr_t)res + span - end);
    uint64_t t0 = hl_now_ns();
    if (populate && ((e = hl_populate((void *)al, head, GB1)) || (e = hl_populate((void *)(al + head), tail, MB2)))) {
        hl_os_unmap(al, head + tail);
        hl_os_close(fd);
        hl_warn_once(R_POPULATE, "pre-faulting 1 GB and 2 MB pages failed (%s): trying 2 MB pages alone",
                     strerror(e));
        return e;
    }
    uint64_t ns = hl_now_ns() - t0;
    out[0] = (hl_anon){(void *)al, head, GB1, PAGE_1G, ns, fd};
    out[1] = (hl_anon){(void *)(al + head), tail, MB2, PAGE_2M, 0, -1};
    return 0;
}

/* The cascade; `parts` allows a 1 GB + 2 MB split (try_parts) when the 1 GB pool is short. */
static int cascade(size_t size, size_t align, const char *what, int populate, hl_anon out[2], int parts)
{
    if (size == 0 || size > (SIZE_MAX >> 2) || align > GB1 * 4)
        return 0;
    int e;
    if (hl_first_page(size, hl_page_size, &hl_pol) == GB1) {
        if ((e = try_hugetlb(size, align, GB1, populate, what, out)) == 0)
            return 1;
        if (parts && try_parts(size, align, populate, what, out) == 0) {
            hl_warn_once(R_1G, "the 1 GB pool has %zu of the %zu pages %s (%zu bytes) needs: %zu x 1 GB + %zu x 2 MB pages",
                         out[0].maplen / GB1, round_up(size, GB1) / GB1, what, size, out[0].maplen / GB1,
                         out[1].maplen / MB2);
            return 2;
        }
        if (hl_warn_wanted(R_1G))
            hl_warn_once(R_1G,
                         "1 GB pages unavailable (%s; pool has %ld free, %zu needed), trying 2 MB for %s (%zu bytes)",
                         strerror(e), pool_free(GB1), round_up(size, GB1) / GB1, what, size);
    } else {
        hl_log(2, "%s (%zu bytes): the page-size policy says 2 MB", what, size);
    }
    if ((e = try_hugetlb(size, align, MB2, populate, what, out)) == 0)
        return 1;
    if (hl_warn_wanted(R_2M))
        hl_warn_once(R_2M, "2 MB pages unavailable (%s; pool has %ld free, %zu needed), trying THP for %s (%zu bytes)",
                     strerror(e), pool_free(MB2), round_up(size, MB2) / MB2, what, size);
    errno = ENOTSUP;
    void *p = (!hl_thp_ok || FAULT(F_THP)) ? NULL : map_thp(size, align, what);
    if (p) {
        out[0] = (hl_anon){p, round_up(size, MB2), KB4, PAGE_THP, 0, -1};
        return 1;
    }
    e = errno;
    hl_warn_once(R_THP, "transparent huge pages unavailable (%s), %s stays on 4 KB pages",
                 hl_thp_ok ? strerror(e) : "disabled", what);
    return 0;
}

int hl_anon_huge(size_t size, size_t align, const char *what, int populate, hl_anon *out)
{
    return cascade(size, align, what, populate, out, 0);
}

int hl_anon_huge_parts(size_t size, size_t align, const char *what, int populate, hl_anon out[2])
{
    return cascade(size, align, what, populate, out, 1);
}
