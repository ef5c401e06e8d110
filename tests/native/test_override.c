/*
 * The overrides linked into a program with the library's sources (no preload): cases the
 * program cannot reach from outside.  Built and run by tests/test_preload.py:
 *   cc -I csrc/preload tests/native/test_override.c csrc/preload/ *.c (without the space)
 * Prints "ok <name>" per case, "FAIL ..." on a failed check; the exit status is the number of
 * failures.
 */
#include "hl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures;
}
