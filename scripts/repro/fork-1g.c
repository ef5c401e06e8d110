/*
 * fork-1g.c: does this kernel keep a private 1 GB hugetlb page mapped in the
 * child of fork?  No hugeload involved.  Seen on kernel 6.18 (these VMs): in
 * about half the forks the child has no page-table entry for the parent's
 * page (mincore says not resident), so its first touch must allocate a new
 * 1 GB page and gets SIGBUS when the pool has none.  2 MB pages: never, in
 * the same loop.  This is why the preload library backs 1 GB allocations
 * with a shared memfd (csrc/preload/hugemem.c).
 *
 *   cc -O1 -o /tmp/fork-1g scripts/repro/fork-1g.c
 *   echo 1 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
 *   /tmp/fork-1g 30        # "1G: 17 of 30 children without the page"
 *   echo 0 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
 * (and 512 2 MB pages for the 2M line; hold /tmp/hugeload-tests.lock meanwhile).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int missing_in_child(int shift, int runs)
{
    size_t n = 1UL << 30, pg = 1UL << shift;
    int bad = 0;
    for (int r = 0; r < runs; r++) {
        char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (shift << 26), -1, 0);
        if (p == MAP_FAILED)
            return -1;
        memset(p, 0x5a, n);
        pid_t pid = fork();
        if (pid == 0) {
            static unsigned char v[512];
            int miss = 0;
            for (size_t off = 0; off < n; off += pg)
                if (mincore(p + off, 4096, v) == 0 && !(v[0] & 1))
                    miss++;
            _exit(miss ? 1 : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        munmap(p, n);
    }
    return bad;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 30;
    int g = missing_in_child(30, runs), m = missing_in_child(21, runs);
    if (g < 0)
        printf("1G: no pool page (reserve one)\n");
    else
        printf("1G: %d of %d children without the page\n", g, runs);
    if (m < 0)
        printf("2M: no pool pages (reserve 512)\n");
    else
        printf("2M: %d of %d children without a page\n", m, runs);
    return 0;
}
