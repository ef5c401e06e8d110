/*
 * config.c: settings from the environment, the CPU -> node map, the
 * constructor/destructor.  The library installs no signal handler (a
 * program's signals stay its own: SIGUSR1 keeps its default action).
 *
 * Active only when this library is the global definition of mmap or malloc
 * (really preloaded, not dlopen'ed by ctypes) and the process is not
 * secure-execution.
 *
 * Environment (set by the CLI):
 *   HUGELOAD_PAGE_SIZE       auto (default) | 1g | 2m   (policy.c)
 *   HUGELOAD_POLICY          the auto rule's parameters  (policy.c)
 *   HUGELOAD_NODE            NUMA node whose staged copy to map (redirect.c)
 *   HUGELOAD_FILES           colon-separated fnmatch globs; a glob without
 *                            '/' matches the base name, an absolute one the
 *                            whole (resolved) path, a relative one with '/'
 *                            the whole path or its tail ("models/ *.gguf"
 *                            without the space matches /srv/models/a.gguf).
 *                            Default: files of >= HUGELOAD_MIN_FILE_SIZE
 *                            mapped whole, plus any staged file.
 *   HUGELOAD_MIN_FILE_SIZE   bytes (K/M/G suffixes allowed), default 1G
 *   HUGELOAD_COPY            1 to make private huge copies of unstaged files
 *   HUGELOAD_ALLOC_THRESHOLD bytes, default 64M; 0 disables; at least 2M
 *   HUGELOAD_FILL_THREADS    threads that pre-fault and copy, default min(4, cpus)
 *   HUGELOAD_LOG             0: fallback warnings only (each reason once),
 *                            1: and the report on stderr (default),
 *                            2: and every region created or gone, every
 *                               fallback every time
 *   HUGELOAD_REPORT          file to append the report to at exit (default
 *                            stderr; log.c says which files it accepts)
 *   HUGELOAD_STATE_DIR       default /run/hugeload
 *   HUGELOAD_DISABLE         1 makes the library inert
 *   HUGELOAD_FAULT           test builds only (-DHUGELOAD_FAULT_INJECTION):
 *                            comma list of 1g,2m,thp,pread,eof,populate
 * Node ids of CPUs are read once here from /sys/devices/system/node.
 */
#include "hl.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/auxv.h>
#include <unistd.h>

int hl_active;
size_t hl_alloc_thresh = SIZE_MAX;
int hl_copy, hl_page_size = POL_AUTO, hl_thp_ok, hl_fill_threads = 4, hl_have_files;
size_t hl_min_file = GB1;
char hl_files[4096];
char hl_index_path[PATH_MAX];
int hl_node_env = -1;
#ifdef HUGELOAD_FAULT_INJECTION
unsigned hl_fault;
#endif

#define MAX_CPUS 4096
static short g_cpu_node[MAX_CPUS];
static int g_nodes_known;

int hl_cpu_node(int cpu) { return cpu >= 0 && cpu < MAX_CPUS && g_nodes_known ? g_cpu_node[cpu] : -1; }

/* "0-3,8,10-11" -> calls f for each number. */
static void each_in_list(const char *s, void (*f)(int, int), int arg)
{
    while (*s >= '0' && *s <= '9') {
        char *e;
        long a = strtol(s, &e, 10), b = a;
        if (*e == '-')
            b = strtol(e + 1, &e, 10);
        for (long i = a; i <= b && i < MAX_CPUS; i++)
            f((int)i, arg);
        s = *e == ',' ? e + 1 : e;
    }
}

static void set_cpu(int cpu, int node) { g_cpu_node[cpu] = (short)node; }

/* The constructor runs alone: static buffers keep its frames small. */
static char g_listbuf[4096], g_onlinebuf[1024];

static void read_node(int node, int unused)
{
    (void)unused;
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/node/node%d/cpulist", node);
    if (hl_os_read_file(path, g_listbuf, sizeof g_listbuf) > 0) {
        each_in_list(g_listbuf, set_cpu, node);
        g_nodes_known = 1;
    }
}

static void read_node_map(void)
{
    for (int i = 0; i < MAX_CPUS; i++)
        g_cpu_node[i] = -1;
    if (hl_os_read_file("/sys/devices/system/node/online", g_onlinebuf, sizeof g_onlinebuf) > 0)
        each_in_list(g_onlinebuf, read_node, 0);
}

int hl_process_node(void)
{
    if (hl_node_env >= 0)
        return hl_node_env;
    if (!g_nodes_known)
        return -1;
    cpu_set_t set;
    if (hl_os_affinity(&set, sizeof set) == 0) {
        int node = -2;
        for (int c = 0; c < CPU_SETSIZE && c < MAX_CPUS; c++) {
            if (!CPU_ISSET(c, &set))
                continue;
            int n = g_cpu_node[c];
            if (node == -2)
                node = n;
            else if (n != node)
                node = -3;
        }
        if (node >= 0)
            return node;
    }
    return hl_os_current_node();
}

static size_t parse_size(const char *name, size_t dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (errno || end == s || *end || *s == '-' || (shift && v > (SIZE_MAX >> shift))) {
        hl_warn_once(R_ENV, "%s=%s is not a size: using %zu", name, s, dflt);
        return dflt;
    }
    return (size_t)(v << shift);
}

static int env_true(const char *name)
{
    const char *s = getenv(name);
    return s && (!strcmp(s, "1") || !strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcasecmp(s, "on"));
}

/* True when the process-wide mmap or malloc is ours: we were preloaded, not dlopen'ed. */
static int is_preloaded(void)
{
    Dl_info self, glob;
    if (!dladdr((void *)is_preloaded, &self))
        return 0;
    const char *names[] = {"mmap", "malloc"};
    for (int i = 0; i < 2; i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        if (sym && dladdr(sym, &glob) && glob.dli_fbase == self.dli_fbase)
            return 1;
    }
    return 0;
}

__attribute__((constructor)) static void hl_ctor(void)
{
    if (getauxval(AT_SECURE))
        return;
    const char *dis = getenv("HUGELOAD_DISABLE");
    if (dis && *dis && strcmp(dis, "0"))
        return;
    hl_resolve();
    if (!is_preloaded())
        return;
    hl_log_init();

    const char *s = getenv("HUGELOAD_LOG");
    if (s && *s)
        hl_log_level = atoi(s);
    s = getenv("HUGELOAD_PAGE_SIZE");
    if (s && *s && hl_parse_page_size(s, &hl_page_size) != 0)
        hl_warn_once(R_ENV, "HUGELOAD_PAGE_SIZE=%s unknown: using auto", s);
    s = getenv("HUGELOAD_POLICY");
    if (s && *s && hl_parse_policy(s, &hl_pol) != 0)
        hl_warn_once(R_ENV, "HUGELOAD_POLICY=%s does not parse: using the defaults where it failed", s);
    s = getenv("HUGELOAD_NODE");
    if (s && *s) {
        char *e;
        long n = strtol(s, &e, 10);
        if (*e || n < 0 || n > 1023)
            hl_warn_once(R_ENV, "HUGELOAD_NODE=%s is not a node number: ignored", s);
        else
            hl_node_env = (int)n;
    }
    s = getenv("HUGELOAD_FILES");
    if (s && *s) {
        if (strlen(s) >= sizeof hl_files)
            hl_warn_once(R_ENV, "HUGELOAD_FILES is too long: only its first %zu bytes are used", sizeof hl_files - 1);
        snprintf(hl_files, sizeof hl_files, "%s", s);
        hl_have_files = 1;
    }
    hl_min_file = parse_size("HUGELOAD_MIN_FILE_SIZE", GB1);
    hl_copy = env_true("HUGELOAD_COPY");
    size_t th = parse_size("HUGELOAD_ALLOC_THRESHOLD", (size_t)64 << 20);
    long cpus = hl_os_cpus();
    hl_fill_threads = cpus > 0 && cpus < 4 ? (int)cpus : 4;
    s = getenv("HUGELOAD_FILL_THREADS");
    if (s && atoi(s) > 0)
        hl_fill_threads = atoi(s) > 16 ? 16 : atoi(s);
    s = getenv("HUGELOAD_REPORT");
    if (s && *s)
        snprintf(hl_report_path, 4096, "%s", s);
    s = getenv("HUGELOAD_STATE_DIR");
    snprintf(hl_index_path, sizeof hl_index_path, "%s/store/redirects", s && *s ? s : "/run/hugeload");

    ssize_t n = hl_os_read_file("/sys/kernel/mm/transparent_hugepage/enabled", g_listbuf, sizeof g_listbuf);
    hl_thp_ok = n > 0 && !strstr(g_listbuf, "[never]");
    read_node_map();
#ifdef HUGELOAD_FAULT_INJECTION
    s = getenv("HUGELOAD_FAULT");
    if (s) {
        hl_fault |= strstr(s, "1g") ? F_1G : 0;
        hl_fault |= strstr(s, "2m") ? F_2M : 0;
        hl_fault |= strstr(s, "thp") ? F_THP : 0;
        hl_fault |= strstr(s, "pread") ? F_PREAD : 0;
        hl_fault |= strstr(s, "eof") ? F_EOF : 0;
        hl_fault |= strstr(s, "populate") ? F_POPULATE : 0;
    }
#endif
    hl_mem_init();
    hl_fork_install();
    hl_active = 1;
    if (th && th < MB2) {
        hl_warn_once(R_ENV, "HUGELOAD_ALLOC_THRESHOLD=%zu is below one 2 MB page: using 2 MiB", th);
        th = MB2;
    }
    hl_alloc_thresh = th ? th : SIZE_MAX;
    hl_log(2, "active: page size %s, copy %s, allocation threshold %zu, index %s, node %d",
           hl_page_size == POL_1G ? "1g" : hl_page_size == POL_2M ? "2m" : "auto", hl_copy ? "on" : "off", th,
           hl_index_path, hl_process_node());
}

__attribute__((destructor)) static void hl_dtor(void)
{
    if (hl_active)
        hl_report();
}
