/*
 * The overrides linked into a program with the library's sources (no preload): cases the
 * program cannot reach from outside.  Built and run by tests/test_preload.py:
 *   cc -I csrc/preload tests/native/test_override.c csrc/preload/ *.c (without the space)
 * Prints "ok <name>" per case, "FAIL ..." on a failed check; the exit status is the number of
 * failures.
 */
#include "hl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(c)                                                                                                      \
    do {                                                                                                              \
        if (!(c)) {                                                                                                   \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);                                                       \
            failures++;                                                                                               \
        }                                                                                                             \
    } while (0)

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
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures;
}
