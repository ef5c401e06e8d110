/*
 * The overrides linked into a program with the library's sources (no preload): cases the
 * program cannot reach from outside.  Built and run by tests/test_preload.py:
 *   cc -I csrc/preload tests/native/test_override.c csrc/preload/ *.c (without the space)
 * Prints "ok <name>" per case, "FAIL ..." on a failed check; the exit status is the number of
 * failures.
 */
#include "hl.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                                                                      \
    do {                                                                                                              \
        if (!(c)) {                                                                                                   \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);                                                       \
            failures++;                                                                                               \
        }                                                                                                             \
    } while (0)

/* A thread inside a redirect-index lookup (it holds the index lock, as hl_index_lookup does). */
static atomic_int g_holding, g_released;

static void *hold_index(void *arg)
{
    (void)arg;
    hl_index_fork_lock();
    atomic_store(&g_holding, 1);
    nanosleep(&(struct timespec){0, 300 * 1000 * 1000}, NULL);
    atomic_store(&g_released, 1);
    hl_index_fork_unlock();
    return NULL;
}

/* The redirect index, version 3: a copy in two parts (filemap.c maps them side by side). */
static char g_dir[] = "/tmp/hl-test-index-XXXXXX";
static int lookup_with(const char *header, const char *tail, const struct stat *src, hl_staged_copy *c)
{
    char tmp[PATH_MAX], text[1024];
    snprintf(tmp, sizeof tmp, "%s/redirects.tmp", g_dir);
    snprintf(hl_index_path, PATH_MAX, "%s/redirects", g_dir);
    int n = snprintf(text, sizeof text, "%s\n%llu %llu %llu %llu %llu -1 1048576 /store/mnt-1g/m/a%%20b%s\n", header,
                     (unsigned long long)src->st_dev, (unsigned long long)src->st_ino,
                     (unsigned long long)src->st_size,
                     (unsigned long long)src->st_mtim.tv_sec * 1000000000ull + (unsigned long long)src->st_mtim.tv_nsec,
                     (unsigned long long)src->st_ctim.tv_sec * 1000000000ull + (unsigned long long)src->st_ctim.tv_nsec,
                     tail);
    FILE *f = fopen(tmp, "w");
    fwrite(text, 1, (size_t)n, f);
    fclose(f);
    chmod(tmp, 0644);
    rename(tmp, hl_index_path); /* a new inode: the library reads it again */
    c->split = 12345;
    c->path[0] = c->path2[0] = 0;
    return hl_index_lookup(src, "src", c);
}

static void test_index_parts(void)
{
    if (!mkdtemp(g_dir)) {
        CHECK(0);
        return;
    }
    char src_path[PATH_MAX], path[PATH_MAX], path2[PATH_MAX];
    snprintf(src_path, sizeof src_path, "%s/src", g_dir);
    FILE *f = fopen(src_path, "w");
    fseek(f, (3L << 30) + 4096, SEEK_SET); /* a sparse 3 GiB + 4 KB + 1 source */
    fputc(1, f);
    fclose(f);
    struct stat src;
    CHECK(stat(src_path, &src) == 0);
    hl_staged_copy c = {path, -1, path2, 0};
    CHECK(lookup_with("hugeload-redirects 3", " 2147483648 2048 /store/mnt-2m/m/a%20b", &src, &c) == 1);
    CHECK(c.split == (size_t)2 << 30 && !strcmp(path, "/store/mnt-1g/m/a b") && !strcmp(path2, "/store/mnt-2m/m/a b"));
    CHECK(lookup_with("hugeload-redirects 3", "", &src, &c) == 1 && c.split == 0 && !strcmp(path, "/store/mnt-1g/m/a b"));
    CHECK(lookup_with("hugeload-redirects 2", "", &src, &c) == 1 && c.split == 0);
    /* Lines that do not parse: a part in a version 2 index, a split that is not a multiple of the
     * first part's page, at 0 or past the end, a third part, a raw space in the second path. */
    CHECK(lookup_with("hugeload-redirects 2", " 2147483648 2048 /p2", &src, &c) == 0);
    CHECK(lookup_with("hugeload-redirects 3", " 2147485696 2048 /p2", &src, &c) == 0);
    CHECK(lookup_with("hugeload-redirects 3", " 0 2048 /p2", &src, &c) == 0);
    CHECK(lookup_with("hugeload-redirects 3", " 4294967296 2048 /p2", &src, &c) == 0);
    CHECK(lookup_with("hugeload-redirects 3", " 1073741824 2048 /p2 2147483648 2048 /p3", &src, &c) == 0);
    CHECK(lookup_with("hugeload-redirects 3", " 1073741824 2048 /p 2", &src, &c) == 0);
    CHECK(lookup_with("hugeload-redirects 4", "", &src, &c) == 0);
    unlink(src_path);
    unlink(hl_index_path);
    rmdir(g_dir);
    printf("ok redirect index parts\n");
}

int main(void)
{
    /* Issue 20, item 13: the bootstrap arena serves dlsym before the real allocator is known; a
     * pointer from it that the program reallocates to 0 bytes is freed (NULL), as glibc's
     * realloc(p, 0) frees p, never a fresh allocation. */
    size_t *h = (size_t *)(hl_arena + ARENA_SIZE - 4096);
    h[1] = 100;
    void *p = &h[2];
    CHECK(in_arena(p));
    void *q = realloc(p, 0);
    CHECK(q == NULL);
    free(q);
    q = realloc(p, 200); /* a real size: a copy from the real allocator */
    CHECK(q != NULL && !in_arena(q));
    free(q);
    printf("ok realloc of a bootstrap pointer\n");

    /* Issue 20, item 13: fork waits for a lookup in another thread to finish with the index, so a
     * child never inherits the table half swapped (atfork_prepare did not take the index lock). */
    CHECK(hl_active); /* the constructor installed the fork handlers: this program is the library */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, hold_index, NULL) == 0);
    while (!atomic_load(&g_holding))
        sched_yield();
    pid_t pid = fork();
    if (pid == 0)
        _exit(atomic_load(&g_released) ? 0 : 1);
    CHECK(atomic_load(&g_released)); /* fork returned only after the lookup let go */
    int st = -1;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    pthread_join(t, NULL);
    printf("ok fork waits for the index lock\n");
    test_index_parts();
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures;
}
