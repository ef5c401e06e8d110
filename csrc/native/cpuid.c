/*
 * hugeload's ctypes-only library (hugeload/_native.so), part 1 of 2: CPUID.
 *
 * Exported for ctypes (ABI version 1, see hugeload.native.SIGNATURES):
 *   int hugeload_abi_version(void);
 *   int hugeload_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
 * The benchmark loops are in bench_loops.c.  This library is never preloaded;
 * it was split out of the preload library (csrc/preload/) so that the one
 * loaded into engines carries nothing but the interposers.
 */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#define HL_EXPORT __attribute__((visibility("default")))

HL_EXPORT int hugeload_abi_version(void) { return 1; }

/*
 * Executes CPUID for (leaf, subleaf) and stores eax, ebx, ecx, edx in out[0..3].
 * Returns 0 on success, -1 when the leaf is beyond the CPU's maximum (basic or
 * extended range) or the architecture has no CPUID; out is zeroed then.
 */
HL_EXPORT int hugeload_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    memset(out, 0, 4 * sizeof(uint32_t));
#if defined(__x86_64__) || defined(__i386__)
    unsigned int max = __get_cpuid_max(leaf & 0x80000000u, 0);
    if (max == 0 || leaf > max)
        return -1;
    unsigned int a, b, c, d;
    __cpuid_count(leaf, subleaf, a, b, c, d);
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
    return 0;
#else
    (void)leaf; (void)subleaf;
    return -1;
#endif
}
