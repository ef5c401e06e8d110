"""HugeTLB Vmemmap Optimization (HVO): /proc/sys/vm/hugetlb_optimize_vmemmap.

Linux 5.19+ built with CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP.  While it reads 1, each huge page
the kernel allocates gives the `struct page` array that describes it (its vmemmap) back to the
buddy allocator, but one page of it; pages allocated while it read 0 keep theirs."""

from hugeload.probe.files import read_int

HVO_SYSCTL = "vm.hugetlb_optimize_vmemmap"
HVO_PATH = "proc/sys/vm/hugetlb_optimize_vmemmap"


def read_hvo(root="/") -> int | None:
    """The sysctl's value, or None when this kernel has no HVO (or /proc/sys cannot be read)."""
    return read_int(root, HVO_PATH)
