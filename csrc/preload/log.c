/*
 * log.c: log lines, the lock, report records and the report.
 *
 * Every line starts "hugeload: ".  Lines go to the stderr the process had when
 * the library started, and only while fd 2 is still that file (same device
 * and inode): a daemon that closed fd 2 and opened a data file gets nothing
 * written into it.  A line logged while this thread holds the lock is kept in
 * a buffer the lock guards and written by hl_unlock() after the mutex is
 * released: write(2) may block on a full stderr pipe and is a cancellation
 * point, and neither may happen with the lock held.
 *
 * Report, at exit, to HUGELOAD_REPORT or stderr (the library installs no
 * signal handler, so there is no report on demand: the live state is in
 * /proc/PID/smaps).  HUGELOAD_REPORT is appended to, opened O_NOFOLLOW and
 * O_CLOEXEC, and used only when it is a regular file owned by the process's
 * effective uid, not writable by others and with one link (the library runs as
 * root inside engines: another user must not steer where it writes).  stderr
 * gets no report when no region was recorded or HUGELOAD_LOG=0.  One header
 * line, then one line per
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
 *         A staged copy in mixed page sizes is two regions, two lines with
 *         the same what: page=1G with the bytes of its first part, then
 *         page=2M with the rest (addr: where each part starts).
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
#include <sys/stat.h>

const char *const hl_page_name[] = {"4K", "THP", "2M", "1G"};
const char *const hl_origin_name[] = {"none", "staged", "direct", "copy", "alloc"};

int hl_log_level = 1;
static atomic_ulong g_warned;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_idle = PTHREAD_COND_INITIALIZER;

/* Lines logged by the lock holder wait here (guarded by the lock itself: only the
 * holder appends) and are written by hl_unlock() from a copy in the library's own
 * memory.  Not thread-local: the library's TLS must stay tiny (initial-exec, dlopen-able). */
#define PENDING 2048
static char g_pending[PENDING];
static size_t g_pending_len;
static atomic_int g_locked;
static pthread_t g_owner;

/* The stderr the process started with. */
static int g_err_known;
static dev_t g_err_dev;
static ino_t g_err_ino;

static int holding_lock(void) { return atomic_load(&g_locked) && pthread_equal(g_owner, pthread_self()); }

void hl_log_init(void)
{
    struct stat st;
    if (hl_os_fstat(2, &st) == 0) {
        g_err_dev = st.st_dev, g_err_ino = st.st_ino;
        g_err_known = 1;
    }
}

static int stderr_is_ours(void)
{
    struct stat st;
    return g_err_known && hl_os_fstat(2, &st) == 0 && st.st_dev == g_err_dev && st.st_ino == g_err_ino;
}

static void write_err(const char *buf, size_t n)
{
    int saved = errno;
    if (stderr_is_ours())
        hl_os_write_all(2, buf, n);
    errno = saved;
}

void hl_lock(void)
{
    pthread_mutex_lock(&g_lock);
    g_owner = pthread_self();
    atomic_store(&g_locked, 1);
}

/* Unmaps queued under the lock, done by hl_unlock() once the mutex is released. */
#define DEFER_MAX 16
static uintptr_t g_defer_a[DEFER_MAX];
static size_t g_defer_len[DEFER_MAX];
static int g_ndefer;

int hl_defer_pending(void) { return g_ndefer > 0; }

void hl_defer_unmap(uintptr_t a, size_t len)
{
    if (g_ndefer == DEFER_MAX) { /* full: now, under the lock (rare) */
        hl_os_unmap(a, len);
        return;
    }
    g_defer_a[g_ndefer] = a, g_defer_len[g_ndefer++] = len;
}

void hl_unlock(void)
{
    size_t n = g_pending_len;
    char *copy = n ? hl_mem_alloc(n) : NULL;
    if (copy)
        memcpy(copy, g_pending, n);
    g_pending_len = 0;
    int nd = g_ndefer;
    uintptr_t da[DEFER_MAX];
    size_t dl[DEFER_MAX];
    for (int i = 0; i < nd; i++)
        da[i] = g_defer_a[i], dl[i] = g_defer_len[i];
    g_ndefer = 0;
    atomic_store(&g_locked, 0);
    pthread_mutex_unlock(&g_lock);
    if (nd) {
        int saved = errno;
        for (int i = 0; i < nd; i++)
            hl_os_unmap(da[i], dl[i]);
        errno = saved;
    }
    if (copy) {
        write_err(copy, n);
        hl_mem_free(copy, n);
    }
}

void hl_wait(void)
{
    atomic_store(&g_locked, 0);
    pthread_cond_wait(&g_idle, &g_lock); /* not a cancellation point here: slow paths disable it */
    g_owner = pthread_self();
    atomic_store(&g_locked, 1);
}

void hl_wake(void) { pthread_cond_broadcast(&g_idle); }

/* The child of fork() is single-threaded: a fresh mutex, held by nobody. */
void hl_lock_reinit_child(void)
{
    pthread_mutex_init(&g_lock, NULL);
    pthread_cond_init(&g_idle, NULL);
    atomic_store(&g_locked, 0);
    g_pending_len = 0;
    g_ndefer = 0;
}

static void vlog(const char *fmt, va_list ap)
{
    int saved = errno;
    char buf[512];
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
        write_err(buf, (size_t)n);
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

int hl_warn_wanted(int reason) { return hl_log_level >= 2 || !(atomic_load(&g_warned) & (1UL << reason)); }

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

/* HUGELOAD_REPORT opened for appending, or -1 (logged) when it is not a file this process
 * may trust: a symlink, another user's file, writable by others, or a hard link. */
static int open_report(void)
{
    int fd = hl_os_open(hl_report_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0) {
        hl_warn_once(R_REPORT, "report file %s cannot be opened (%s): report on stderr", hl_report_path,
                     strerror(errno));
        return -1;
    }
    struct stat st;
    if (hl_os_fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != hl_os_geteuid() || (st.st_mode & S_IWOTH) ||
        st.st_nlink != 1) {
        hl_os_close(fd);
        hl_warn_once(R_REPORT,
                     "report file %s is not a regular file of this user with one link and no write for others: "
                     "report on stderr",
                     hl_report_path);
        return -1;
    }
    return fd;
}

static void report_write(int fd, const char *buf, size_t n)
{
    if (fd == 2)
        write_err(buf, n);
    else
        hl_os_write_all(fd, buf, n);
}

void hl_report(void)
{
    int fd = 2, close_it = 0;
    int n = atomic_load(&g_nrec);
    if (n > HL_MAX_RECORDS)
        n = HL_MAX_RECORDS;
    if (hl_report_path[0]) {
        fd = open_report();
        if (fd >= 0)
            close_it = 1;
        else
            fd = 2;
    }
    if (!close_it && (hl_log_level < 1 || n == 0))
        return;
    int pid = hl_os_getpid();
    char line[512];
    int len = snprintf(line, sizeof line, "hugeload: report pid=%d regions=%d dropped=%ld\n", pid, n,
                       (long)atomic_load(&g_rec_dropped));
    report_write(fd, line, (size_t)len);
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
        report_write(fd, line, (size_t)len);
    }
    if (close_it)
        hl_os_close(fd);
}
