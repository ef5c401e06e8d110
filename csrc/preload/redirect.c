/*
 * redirect.c: the store's redirect index (contract C1, versions 2 and 3), read-only.
 *
 * File $HUGELOAD_STATE_DIR/store/redirects, written by
 * hugeload/act/redirects.py only (atomically: temp + rename):
 *   hugeload-redirects 2
 *   <src_dev> <src_ino> <src_size> <src_mtime_ns> <src_ctime_ns> <node> <page_kb> <path>
 * Version 3 (header "hugeload-redirects 3", written only when some copy is in
 * parts) lets a line go on with one " <offset> <page_kb> <path>" for the
 * second part of a copy in mixed page sizes: the source's bytes from <offset>
 * on (0 < offset < size, a multiple of the first part's page size) are in
 * that staged file from its start, the bytes before in the first <path>
 * (filemap.c maps both side by side as one range).  At most HL_MAX_PARTS parts.
 * one line per staged copy; <path> has bytes <= 0x20, '%' and >= 0x7f written
 * as %XX (so a newline, tab or space in a name cannot forge a line); several
 * lines may name the same source, one per NUMA node copy (node -1:
 * interleaved or not placed).  A source matches on all of dev, ino, size,
 * mtime and ctime: a file rewritten and given back its old mtime has a new
 * ctime, and is not served the stale copy.
 * Trust: the index and every staged file must be owned by root with no
 * group/other write; otherwise it is ignored with one log line.  A line that
 * does not parse is skipped with one log line; a file without the version 2
 * or 3 header is ignored (a version 2 line with parts does not parse).
 * Reload: the index is re-read when its dev/ino/size/mtime/ctime change.
 * The file is read and parsed with no lock held; only the swap of the parsed
 * table and the lookup (a copy of one path) happen under g_idx_lock.
 * Node choice: HUGELOAD_NODE if set, else the node of the CPU affinity when
 * it lies on one node, else the node of the current CPU (getcpu); with no
 * copy there, any copy (node -1 first), logged once:
 *   hugeload: no copy of <what> on node <n>; using node <m>
 */
#include "hl.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    uint64_t dev, ino, size, mtime, ctime;
    int node, page_kb;
    size_t path_off;
    uint64_t split;   /* 0: one part */
    int page2_kb;
    size_t path2_off; /* the second part's path, when split > 0 */
} hl_redir;

typedef struct {
    int loaded;
    uint64_t dev, ino, size, mtime, ctime;
    char *text;
    size_t text_map;
    hl_redir *ent;
    size_t n, ent_map;
} hl_index;

static hl_index g_idx;
static pthread_mutex_t g_idx_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t ts_ns(struct timespec t) { return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec; }

static void index_free(hl_index *x)
{
    if (x->text)
        hl_mem_free(x->text, x->text_map);
    if (x->ent)
        hl_mem_free(x->ent, x->ent_map);
    memset(x, 0, sizeof *x);
}

void hl_index_reset_child(void) { pthread_mutex_init(&g_idx_lock, NULL); }

/* Held across fork (fork.c), so a child never inherits the table half swapped. */
void hl_index_fork_lock(void) { pthread_mutex_lock(&g_idx_lock); }
void hl_index_fork_unlock(void) { pthread_mutex_unlock(&g_idx_lock); }

int hl_trusted(const void *stp, const char *what, const char *kind)
{
    const struct stat *st = stp;
    if (st->st_uid == 0 && !(st->st_mode & (S_IWGRP | S_IWOTH)))
        return 1;
    hl_warn_once(R_TRUST, "%s %s is not owned by root or is writable by group or others: ignored", kind, what);
    return 0;
}

static int parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    if (*p < '0' || *p > '9')
        return -1;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    *out = v;
    *s = p;
    return 0;
}

static int parse_int(const char **s, int *out)
{
    int neg = **s == '-';
    if (neg)
        (*s)++;
    uint64_t v;
    if (parse_u64(s, &v) != 0 || v > 1u << 30)
        return -1;
    *out = neg ? -(int)v : (int)v;
    return 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes %XX in place; -1 for a bad escape, a raw byte that should have been escaped, or a NUL. */
static int unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c >= 0x7f)
            return -1;
        if (c == '%') {
            int h = hexval(s[1]), l = h < 0 ? -1 : hexval(s[2]);
            if (l < 0 || (h == 0 && l == 0))
                return -1;
            *o++ = (char)(h * 16 + l);
            s += 2;
        } else {
            *o++ = (char)c;
        }
    }
    *o = 0;
    return 0;
}

/* Parses one line (NUL-terminated, in place) after its header into e; -1 when it does not parse.
 * `parts`: a version 3 index, where a second part may follow. */
static int parse_line(char *line, const char *text, int parts, hl_redir *e)
{
    const char *p = line;
    memset(e, 0, sizeof *e);
    if (!(parse_u64(&p, &e->dev) == 0 && *p++ == ' ' && parse_u64(&p, &e->ino) == 0 && *p++ == ' ' &&
          parse_u64(&p, &e->size) == 0 && *p++ == ' ' && parse_u64(&p, &e->mtime) == 0 && *p++ == ' ' &&
          parse_u64(&p, &e->ctime) == 0 && *p++ == ' ' && parse_int(&p, &e->node) == 0 && *p++ == ' ' &&
          parse_int(&p, &e->page_kb) == 0 && *p++ == ' ' && *p))
        return -1;
    char *path = (char *)p, *sp = strchr(path, ' ');
    if (sp) { /* a second part: <offset> <page_kb> <path>, nothing after */
        if (!parts)
            return -1;
        *sp = 0;
        const char *q = sp + 1;
        if (!(parse_u64(&q, &e->split) == 0 && *q++ == ' ' && parse_int(&q, &e->page2_kb) == 0 && *q++ == ' ' &&
              *q && !strchr(q, ' ')))
            return -1;
        uint64_t unit = (uint64_t)(e->page_kb > 0 ? e->page_kb : 1) * 1024;
        if (e->split == 0 || e->split >= e->size || e->split % unit || e->page2_kb <= 0 || unescape((char *)q) != 0)
            return -1;
        e->path2_off = (size_t)(q - text);
    }
    if (unescape(path) != 0)
        return -1;
    e->path_off = (size_t)(path - text);
    return 0;
}

/* Reads and parses the index into x (the library's own memory, never malloc: we may be inside it).
 * No lock held. */
static void index_read(const char *path, hl_index *x)
{
    memset(x, 0, sizeof *x);
    int fd = hl_os_open_ro(path);
    if (fd < 0)
        return;
    struct stat st;
    if (hl_os_fstat(fd, &st) != 0 || st.st_size > (64 << 20)) {
        hl_os_close(fd);
        hl_warn_once(R_INDEX, "redirect index %s unreadable or too large", path);
        return;
    }
    x->loaded = 1;
    x->dev = st.st_dev, x->ino = st.st_ino, x->size = (uint64_t)st.st_size;
    x->mtime = ts_ns(st.st_mtim), x->ctime = ts_ns(st.st_ctim);
    if (!hl_trusted(&st, path, "redirect index")) {
        hl_os_close(fd);
        return;
    }
    size_t size = (size_t)st.st_size, tmap = round_up(size + 1, KB4);
    char *text = hl_mem_alloc(tmap);
    if (!text) {
        hl_os_close(fd);
        return;
    }
    ssize_t r = hl_os_read_all(fd, text, size, 0);
    size_t got = r > 0 ? (size_t)r : 0;
    hl_os_close(fd);
    text[got] = 0;
    x->text = text, x->text_map = tmap;
    static const char header[] = "hugeload-redirects 2\n", header3[] = "hugeload-redirects 3\n";
    int parts = got >= sizeof header3 - 1 && memcmp(text, header3, sizeof header3 - 1) == 0;
    if (!parts && (got < sizeof header - 1 || memcmp(text, header, sizeof header - 1) != 0)) {
        hl_warn_once(R_INDEX, "redirect index %s is not version 2 or 3: ignored", path);
        return;
    }
    size_t lines = 1;
    for (size_t i = 0; i < got; i++)
        lines += text[i] == '\n';
    size_t emap = round_up(lines * sizeof(hl_redir), KB4);
    hl_redir *ent = hl_mem_alloc(emap);
    if (!ent)
        return;
    x->ent = ent, x->ent_map = emap;
    char *line = text + sizeof header - 1;
    while (line < text + got) {
        char *nl = memchr(line, '\n', (size_t)(text + got - line));
        char *end = nl ? nl : text + got;
        *end = 0;
        hl_redir e;
        if (*line && parse_line(line, text, parts, &e) == 0) {
            ent[x->n++] = e;
        } else if (*line) {
            hl_warn_once(R_INDEX, "malformed line in redirect index %s ignored", path);
        }
        line = end + 1;
    }
    hl_log(2, "redirect index %s: %zu entries", path, x->n);
}

int hl_index_lookup(const void *stp, const char *what, hl_staged_copy *out)
{
    const struct stat *st = stp;
    struct stat ist;
    int have = hl_os_stat(hl_index_path, &ist) == 0;
    hl_index fresh, old;
    memset(&old, 0, sizeof old);
    pthread_mutex_lock(&g_idx_lock);
    int stale = have != g_idx.loaded ||
                (have && (g_idx.dev != (uint64_t)ist.st_dev || g_idx.ino != (uint64_t)ist.st_ino ||
                          g_idx.size != (uint64_t)ist.st_size || g_idx.mtime != ts_ns(ist.st_mtim) ||
                          g_idx.ctime != ts_ns(ist.st_ctim)));
    pthread_mutex_unlock(&g_idx_lock);
    if (stale) {
        if (have)
            index_read(hl_index_path, &fresh);
        else
            memset(&fresh, 0, sizeof fresh);
        pthread_mutex_lock(&g_idx_lock);
        old = g_idx;
        g_idx = fresh;
        pthread_mutex_unlock(&g_idx_lock);
        index_free(&old);
    }
    int want = hl_process_node();
    uint64_t mt = ts_ns(st->st_mtim), ct = ts_ns(st->st_ctim);
    int found = 0, best = -1, best_rank = 99, any_node = 0;
    pthread_mutex_lock(&g_idx_lock);
    for (size_t i = 0; i < g_idx.n; i++) {
        hl_redir *e = &g_idx.ent[i];
        if (e->dev != (uint64_t)st->st_dev || e->ino != (uint64_t)st->st_ino || e->size != (uint64_t)st->st_size ||
            e->mtime != mt || e->ctime != ct)
            continue;
        any_node |= e->node >= 0;
        int rank = (want >= 0 && e->node == want) ? 0 : e->node < 0 ? 1 : 2;
        if (rank < best_rank) {
            best_rank = rank;
            best = (int)i;
        }
    }
    if (best >= 0) {
        hl_redir *e = &g_idx.ent[best];
        snprintf(out->path, PATH_MAX, "%s", g_idx.text + e->path_off);
        out->node = e->node;
        out->split = 0;
        if (e->split && out->path2) {
            snprintf(out->path2, PATH_MAX, "%s", g_idx.text + e->path2_off);
            out->split = (size_t)e->split;
        }
        found = 1;
    }
    pthread_mutex_unlock(&g_idx_lock);
    if (found && want >= 0 && best_rank > 0 && any_node)
        hl_warn_once(R_NODE, "no copy of %s on node %d; using node %d", what, want, out->node);
    return found;
}
