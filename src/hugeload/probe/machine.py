"""One read of every fact the planner and doctor need."""

import os
from dataclasses import dataclass

from hugeload.pages import HUGE
from hugeload.probe import cgroup, cpu, hvo, kconfig, kernel, memory, mounts, pools, thp
from hugeload.probe.pools import Pool


@dataclass
class Machine:
    root: str
    kernel_release: str
    boot: kernel.BootParams
    page_sizes_kb: list[int]
    pools: list[Pool]
    nodes: list[int]
    mounts: list[mounts.HugetlbfsMount]
    hugetlbfs_supported: bool
    thp: thp.Thp
    cpu: cpu.CpuInfo
    cgroup: cgroup.CgroupInfo
    meminfo: dict
    buddyinfo: list[memory.BuddyZone]
    pressure: memory.Pressure | None
    is_root: bool
    hvo: int | None = None  # vm.hugetlb_optimize_vmemmap; None: no HVO in this kernel
    kernel_config: kconfig.KernelConfig | None = None  # None: neither /proc/config.gz nor /boot/config-*

    def system_pool(self, kb: int) -> Pool | None:
        for p in self.pools:
            if p.page_size_kb == kb and p.node is None:
                return p
        return None


CAP_SYS_ADMIN = 21


def has_admin(root="/") -> bool:
    """Root, or CAP_SYS_ADMIN in the effective set (what hugetlbfs mounts and pool writes need)."""
    if str(root) == "/" and os.geteuid() == 0:
        return True
    from hugeload.probe.procs import read_status

    cap = read_status(root, "self").get("CapEff", "0")
    try:
        return bool(int(cap, 16) >> CAP_SYS_ADMIN & 1)
    except ValueError:
        return False


def read_machine(root="/", is_root: bool | None = None) -> Machine:
    sizes = pools.page_sizes(root)
    return Machine(
        root=str(root),
        kernel_release=kernel.read_kernel_release(root),
        boot=kernel.read_boot_params(root),
        page_sizes_kb=sizes,
        pools=pools.read_pools(root),
        nodes=pools.nodes(root),
        mounts=mounts.read_mounts(root),
        hugetlbfs_supported=mounts.hugetlbfs_supported(root),
        thp=thp.read_thp(root),
        cpu=cpu.read_cpu(root),
        cgroup=cgroup.read_cgroup(root, sizes or tuple(sorted(p.kb for p in HUGE))),
        meminfo=memory.read_meminfo(root),
        buddyinfo=memory.read_buddyinfo(root),
        pressure=memory.read_pressure(root),
        is_root=has_admin(root) if is_root is None else is_root,
        hvo=hvo.read_hvo(root),
        kernel_config=kconfig.read_kernel_config(root),
    )
