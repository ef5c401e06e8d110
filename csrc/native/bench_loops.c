/*
 * hugeload's ctypes-only library (hugeload/_native.so), part 2 of 2: the
 * benchmark kernels called by `hugeload bench` through ctypes.
 *
 *   int    hugeload_chase_init(void *buf, size_t bytes, size_t stride, uint64_t seed);
 *   double hugeload_chase_ns(const void *buf, uint64_t accesses);
 *   double hugeload_seq_read_gbps(const void *buf, size_t bytes, int repeats);
 *   double hugeload_memcpy_gbps(void *dst, const void *src, size_t bytes, int repeats);
 *   double hugeload_malloc_free_ns(uint64_t pairs, size_t size);
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HL_EXPORT __attribute__((visibility("default")))

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * Builds one random cycle through the slots buf + i*stride, i < bytes/stride
 * (Sattolo's shuffle): each slot's first word points to the next slot.
 * stride must be a multiple of 8 and buf 8-aligned.  0, or -1 on bad input.
 */
HL_EXPORT int hugeload_chase_init(void *buf, size_t bytes, size_t stride, uint64_t seed)
{
    if (!buf || stride < sizeof(void *) || stride % sizeof(void *) || (uintptr_t)buf % sizeof(void *))
        return -1;
    size_t n = bytes / stride;
    if (n < 2)
        return -1;
    char *b = buf;
#define SLOT(i) (*(size_t *)(b + (i) * stride))
    for (size_t i = 0; i < n; i++)
        SLOT(i) = i;
    uint64_t s = seed;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)(((unsigned __int128)splitmix64(&s) * i) >> 64); /* j in [0, i) */
        size_t t = SLOT(i);
        SLOT(i) = SLOT(j);
        SLOT(j) = t;
    }
    for (size_t i = 0; i < n; i++)
        *(void **)(b + i * stride) = b + SLOT(i) * stride;
#undef SLOT
    return 0;
}

static void *volatile g_sink_ptr;
static volatile uint64_t g_sink;

/* Follows the chain from buf for `accesses` dependent loads; ns per access (-1 on bad input). */
HL_EXPORT double hugeload_chase_ns(const void *buf, uint64_t accesses)
{
    if (!buf || !accesses)
        return -1.0;
    void *const *p = buf;
    uint64_t k = accesses;
    uint64_t t0 = now_ns();
    while (k >= 8) {
        p = *p; p = *p; p = *p; p = *p;
        p = *p; p = *p; p = *p; p = *p;
        k -= 8;
    }
    while (k--)
        p = *p;
    uint64_t t1 = now_ns();
    g_sink_ptr = (void *)p;
    return (double)(t1 - t0) / (double)accesses;
}

/* Best of `repeats` passes reading bytes (rounded down to 64) from buf; GB/s (1e9 bytes), -1 on bad input. */
HL_EXPORT double hugeload_seq_read_gbps(const void *buf, size_t bytes, int repeats)
{
    size_t lines = bytes / 64;
    if (!buf || lines == 0 || repeats < 1 || (uintptr_t)buf % 8)
        return -1.0;
    const uint64_t *q = buf;
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < lines; i++) {
            const uint64_t *l = q + i * 8;
            s0 += l[0]; s1 += l[1]; s2 += l[2]; s3 += l[3];
            s4 += l[4]; s5 += l[5]; s6 += l[6]; s7 += l[7];
        }
        uint64_t t1 = now_ns();
        g_sink += s0 ^ s1 ^ s2 ^ s3 ^ s4 ^ s5 ^ s6 ^ s7;
        double gbps = (double)(lines * 64) / (double)(t1 - t0 ? t1 - t0 : 1);
        if (gbps > best)
            best = gbps;
    }
    return best;
}

/* Best of `repeats` memcpy(dst, src, bytes); GB/s of bytes copied, -1 on bad input. */
HL_EXPORT double hugeload_memcpy_gbps(void *dst, const void *src, size_t bytes, int repeats)
{
    if (!dst || !src || !bytes || repeats < 1)
        return -1.0;
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        uint64_t t0 = now_ns();
        memcpy(dst, src, bytes);
        __asm__ volatile("" : : "r"(dst) : "memory");
        uint64_t t1 = now_ns();
        double gbps = (double)bytes / (double)(t1 - t0 ? t1 - t0 : 1);
        if (gbps > best)
            best = gbps;
    }
    return best;
}

/*
 * ns per malloc(size)/free pair, over `pairs` pairs (-1 when malloc fails).
 * The calls go through the PLT, so in a process started with LD_PRELOAD they
 * reach the preloaded allocator: `hugeload bench hotpath` runs this with and
 * without libhugeload.so.  The volatile store keeps the compiler from
 * eliding the pair.
 */
HL_EXPORT double hugeload_malloc_free_ns(uint64_t pairs, size_t size)
{
    void *volatile sink;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < pairs; i++) {
        sink = malloc(size);
        if (!sink)
            return -1;
        free(sink);
    }
    return pairs ? (double)(now_ns() - t0) / (double)pairs : 0;
}
