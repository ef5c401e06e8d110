/*
 * policy.c: the page size to try first, as Python decided it.
 *
 * One rule, owned by hugeload/pages.py (contract C2); this file only applies
 * it with the parameters the runner passes:
 *   HUGELOAD_PAGE_SIZE = auto | 1g | 2m          (aliases 1gb, 2mb; any case)
 *   HUGELOAD_POLICY    = auto_1g_min=<bytes>,auto_1g_max_waste_ppm=<int>,
 *                        forced_1g_min=<bytes>   (any subset, any order)
 * auto: 1 GB when bytes >= auto_1g_min and round_up(bytes, 1 GiB) - bytes is
 * at most auto_1g_max_waste_ppm / 1e6 of bytes; 1g: 1 GB when bytes >=
 * forced_1g_min; otherwise 2 MB.  Without HUGELOAD_POLICY the compiled-in
 * defaults below are used; they equal Python's (1 GiB, 125000, 256 MiB).
 *
 * Exported so the parity test can compare C with Python at the boundaries:
 *   int hugeload_page_choice_kb(unsigned long long bytes, const char *page_size,
 *                               const char *policy);
 *   -> 1048576 or 2048; NULL page_size/policy mean the defaults; -1 when
 *   either string does not parse.
 */
#include "hl.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const hl_policy g_default = {(unsigned long long)1 << 30, 125000, (unsigned long long)256 << 20};
hl_policy hl_pol = {(unsigned long long)1 << 30, 125000, (unsigned long long)256 << 20};

int hl_parse_page_size(const char *s, int *out)
{
    if (!strcasecmp(s, "auto"))
        *out = POL_AUTO;
    else if (!strcasecmp(s, "1g") || !strcasecmp(s, "1gb"))
        *out = POL_1G;
    else if (!strcasecmp(s, "2m") || !strcasecmp(s, "2mb"))
        *out = POL_2M;
    else
        return -1;
    return 0;
}

int hl_parse_policy(const char *s, hl_policy *out)
{
    hl_policy p = *out;
    while (*s) {
        const char *eq = strchr(s, '=');
        if (!eq)
            return -1;
        size_t klen = (size_t)(eq - s);
        char *end;
        if (eq[1] < '0' || eq[1] > '9')
            return -1;
        errno = 0;
        unsigned long long v = strtoull(eq + 1, &end, 10);
        if (errno || (*end && *end != ','))
            return -1;
        if (klen == 11 && !strncmp(s, "auto_1g_min", klen))
            p.auto_1g_min = v;
        else if (klen == 21 && !strncmp(s, "auto_1g_max_waste_ppm", klen))
            p.auto_1g_max_waste_ppm = v;
        else if (klen == 13 && !strncmp(s, "forced_1g_min", klen))
            p.forced_1g_min = v;
        else
            return -1;
        s = *end ? end + 1 : end;
    }
    *out = p;
    return 0;
}

size_t hl_first_page(size_t bytes, int page_size, const hl_policy *pol)
{
    switch (page_size) {
    case POL_2M:
        return MB2;
    case POL_1G:
        return bytes >= pol->forced_1g_min ? GB1 : MB2;
    default:
        if (bytes < pol->auto_1g_min || bytes == 0)
            return MB2;
        unsigned __int128 waste = (unsigned __int128)(round_up(bytes, GB1) - bytes);
        return waste * 1000000u <= (unsigned __int128)pol->auto_1g_max_waste_ppm * bytes ? GB1 : MB2;
    }
}

HL_EXPORT int hugeload_page_choice_kb(unsigned long long bytes, const char *page_size, const char *policy)
{
    int ps = POL_AUTO;
    hl_policy pol = g_default;
    if (page_size && hl_parse_page_size(page_size, &ps) != 0)
        return -1;
    if (policy && hl_parse_policy(policy, &pol) != 0)
        return -1;
    return hl_first_page((size_t)bytes, ps, &pol) == GB1 ? 1048576 : 2048;
}
