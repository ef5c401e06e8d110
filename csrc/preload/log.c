/*
 * log.c: log lines, the lock, report records and the report.
 *
 * Every line starts "hugeload: ".  A line logged while this thread holds the
 * lock is formatted into a buffer the lock guards and written by hl_unlock() after
 * the mutex is released: write(2) may block on a full stderr pipe and is a
 * cancellation point, and neither may happen with the lock held (a thread
 * cancelled in free() while logging used to leave the lock held for good).
 *
 * Report (at exit and on SIGUSR1 if the program has no handler of its own),
 * to HUGELOAD_REPORT (appended) or stderr; stderr gets no report when no
 * region was recorded or HUGELOAD_LOG=0.  One header line, then one line per
 * region ever created (at most 2048), space-separated key=value fields, stable
 * order:
 *   hugeload: report pid=<pid> regions=<n> dropped=<n>
 *   hugeload: region pid=<pid> what=<name> bytes=<n> mapped=<n>
 *             page=<1G|2M|THP|4K> fill=<staged|direct|copy|alloc|none>
 *             ms=<float> addr=0x<hex> live=<0|1>
 *   (one line; the region line is wrapped here only)
 *   what: file base name, or the allocating function (malloc, calloc, ...);
 *         bytes <= ' ', '%', '=' and >= 0x7f are written as %XX.
 *   bytes: length the program asked for; mapped: length actually mapped.
 *   fill: the region's origin: staged = redirected to the store's hugetlbfs
 *         file, direct = the program mapped a hugetlbfs file itself, copy =
 *         private copy read with pread, alloc = anonymous memory for an
 *         allocation, none = the real mmap was used (page=4K).  An allocation
 *         that fell back to the real allocator is reported page=4K fill=alloc.
 *   ms: time spent creating the region: mapping, pre-faulting (several
 *       threads) and copying.
 *   live: 1 if the region was still mapped when the report was written
 *         (always 0 for page=4K lines: those are not tracked).
 *   A forked child starts with no records: it reports what it creates.
 */
#include "hl.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *const hl_page_name[] = {"4K", "THP", "2M", "1G"};
const char *const hl_origin_name[] = {"none", "staged", "direct", "copy", "alloc"};

int hl_log_level = 1;
static atomic_ulong g_warned;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* Lines logged by the lock holder wait here (guarded by the lock itself: only the
 * holder appends) and are written by hl_unlock() from a copy on its stack.  Not
 * thread-local: the library's TLS must stay tiny (initial-exec, dlopen-able). */
#define PENDING 2048
static char g_pending[PENDING];
static size_t g_pending_len;
static atomic_int g_locked;
static pthread_t g_owner;

static int holding_lock(void) { return atomic_load(&g_locked) && pthread_equal(g_owner, pthread_self()); }

static void write_all(int fd, const char *buf, size_t n)
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

void hl_lock(void)
{
    pthread_mutex_lock(&g_lock);
    g_owner = pthread_self();
    atomic_store(&g_locked, 1);
}

void hl_unlock(void)
{
    char buf[PENDING];
    size_t n = g_pending_len;
    if (n)
        memcpy(buf, g_pending, n);
    g_pending_len = 0;
    atomic_store(&g_locked, 0);
    pthread_mutex_unlock(&g_lock);
    if (n) {
        int saved = errno;
        write_all(2, buf, n);
        errno = saved;
    }
}

/* The child of fork() is single-threaded: a fresh mutex, held by nobody. */
void hl_lock_reinit_child(void)
{
    pthread_mutex_init(&g_lock, NULL);
    atomic_store(&g_locked, 0);
    g_pending_len = 0;
}

static void vlog(const char *fmt, va_list ap)
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
    if (holding_lock()) {
        if (g_pending_len + (size_t)n <= PENDING) {
            memcpy(g_pending + g_pending_len, buf, (size_t)n);
            g_pending_len += (size_t)n;
        }
    } else {
        write_all(2, buf, (size_t)n);
    }
    errno = saved;
}

void hl_log(int level, const char *fmt, ...)
{
    if (hl_log_level < level)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
}

/* Logs a fallback once per reason (every time with HUGELOAD_LOG=2), even with HUGELOAD_LOG=0. */
void hl_warn_once(int reason, const char *fmt, ...)
{
    unsigned long bit = 1UL << reason;
    if ((atomic_fetch_or(&g_warned, bit) & bit) && hl_log_level < 2)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
}

/* ---- report records --------------------------------------------------- */

#define HL_MAX_RECORDS 2048
typedef struct {
    atomic_int ready;
    atomic_int live;
    int page, origin;
    uint64_t bytes, mapped, us;
    uintptr_t addr;
    char what[64];
} hl_rec;
static hl_rec g_rec[HL_MAX_RECORDS];
static atomic_int g_nrec;
static atomic_long g_rec_dropped;
char hl_report_path[4096];

/* Base name of path, percent-encoded so the report stays one token. */
void hl_encode_what(const char *path, char *out, size_t outsz)
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

int hl_record(const char *what, uint64_t bytes, uint64_t mapped, int page, int origin, uint64_t ns,
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
    r->origin = origin;
    r->us = ns / 1000;
    r->addr = addr;
    atomic_store(&r->live, live);
    atomic_store_explicit(&r->ready, 1, memory_order_release);
    return i;
}

void hl_record_gone(int rec)
{
    if (rec >= 0 && rec < HL_MAX_RECORDS)
        atomic_store(&g_rec[rec].live, 0);
}

void hl_records_forget(void)
{
    for (int i = 0; i < HL_MAX_RECORDS; i++)
        atomic_store(&g_rec[i].ready, 0);
    atomic_store(&g_nrec, 0);
    atomic_store(&g_rec_dropped, 0);
}

/* Async-signal-safe enough: snprintf of integers and strings, write(). */
void hl_report(void)
{
    int fd = 2, close_it = 0;
    int n = atomic_load(&g_nrec);
    if (n > HL_MAX_RECORDS)
        n = HL_MAX_RECORDS;
    if (hl_report_path[0]) {
        fd = open(hl_report_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0)
            close_it = 1;
        else
            fd = 2;
    }
    if (!close_it && (hl_log_level < 1 || n == 0))
        return;
    int pid = (int)getpid();
    char line[512];
    int len = snprintf(line, sizeof line, "hugeload: report pid=%d regions=%d dropped=%ld\n", pid, n,
                       (long)atomic_load(&g_rec_dropped));
    write_all(fd, line, (size_t)len);
    for (int i = 0; i < n; i++) {
        hl_rec *r = &g_rec[i];
        if (!atomic_load_explicit(&r->ready, memory_order_acquire))
            continue;
        len = snprintf(line, sizeof line,
                       "hugeload: region pid=%d what=%s bytes=%llu mapped=%llu page=%s fill=%s ms=%llu.%03llu "
                       "addr=0x%lx live=%d\n",
                       pid, r->what, (unsigned long long)r->bytes, (unsigned long long)r->mapped,
                       hl_page_name[r->page], hl_origin_name[r->origin], (unsigned long long)(r->us / 1000),
                       (unsigned long long)(r->us % 1000), (unsigned long)r->addr, atomic_load(&r->live));
        if (len > (int)sizeof line - 1)
            len = (int)sizeof line - 1;
        write_all(fd, line, (size_t)len);
    }
    if (close_it)
        close(fd);
}
