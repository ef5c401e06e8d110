/*
 * hugeload's native library.
 *
 * One file, built by `pip install` into the package as libhugeload.so.  It is
 * loaded two ways:
 *   - by Python through ctypes (RTLD_LOCAL: nothing is interposed), for the
 *     probe's CPUID reads and the benchmarks' timing loops;
 *   - by LD_PRELOAD into unmodified engines (llama.cpp), where it interposes
 *     mmap and friends.  It must therefore never reference Python symbols.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#define HL_EXPORT __attribute__((visibility("default")))

/* ABI version of the exported functions, checked by the Python loader. */
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
