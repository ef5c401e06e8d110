"""The seed's compatibility matrix as checks over probed facts.  Pure: the caller probes."""

from typing import NamedTuple

from hugeload.pages import PAGE_1G
from hugeload.pages import name as page_size_name
from hugeload.plan import cma as plan_cma
from hugeload.plan import hvo as plan_hvo
from hugeload.probe.kernel import version_tuple
from hugeload.units import GiB, KiB, format_bytes

GIGANTIC_KB = PAGE_1G.kb
MIN_KERNEL = (3, 8)  # MAP_HUGE_1GB and per-size hugetlbfs mounts


class Check(NamedTuple):
    name: str
    status: str  # pass / warn / fail
    detail: str
    fix: str  # exact command or action; "" when nothing to do
    blocks_1g: bool = False  # a fail here means 1G pages are not usable


class TryResult(NamedTuple):
    """Outcome of `doctor --try`: one 1 GB page reserved and given back."""

    obtained: int
    restored: bool
    error: str | None


def _check(name, ok, detail, fix="", warn=False, blocks=False) -> Check:
    status = "pass" if ok else ("warn" if warn else "fail")
    return Check(name, status, detail, "" if ok else fix, blocks and status == "fail")


def check_kernel(m) -> Check:
    v = version_tuple(m.kernel_release)
    return _check(
        "kernel",
        bool(v) and v >= MIN_KERNEL,
        f"Linux {m.kernel_release or 'unknown'} (1G pages need 3.8 or newer)",
        "upgrade the kernel to 3.8 or newer",
        blocks=True,
    )


def check_cpu(m) -> Check:
    c = m.cpu
    name = c.model_name or c.vendor or "unknown CPU"
    if c.pdpe1gb:
        return _check("cpu_1g", True, f"{name} (family {c.family}, model {c.model}) has pdpe1gb")
    return _check(
        "cpu_1g",
        False,
        f"{name} lacks the pdpe1gb flag: no 1G pages",
        "use 2M pages: hugeload load --page-size 2m FILE",
        blocks=True,
    )


def check_hugetlbfs(m) -> Check:
    ok = m.hugetlbfs_supported and GIGANTIC_KB in m.page_sizes_kb
    if not m.hugetlbfs_supported:
        detail = "the kernel has no hugetlbfs (CONFIG_HUGETLBFS)"
    elif GIGANTIC_KB not in m.page_sizes_kb:
        detail = f"hugetlbfs present; page sizes offered: {', '.join(f'{k} kB' for k in m.page_sizes_kb) or 'none'}"
    else:
        detail = "hugetlbfs present; 1G pool at /sys/kernel/mm/hugepages/hugepages-1048576kB"
    return _check(
        "hugetlbfs", ok, detail, "use a kernel built with CONFIG_HUGETLBFS=y and gigantic page support", blocks=True
    )


def check_privileges(m) -> Check:
    return _check(
        "privileges",
        m.is_root,
        "running as root / CAP_SYS_ADMIN" if m.is_root else "not root: pools and mounts cannot be changed",
        "run hugeload with sudo",
        blocks=True,
    )


def check_pool_1g(m, tried: TryResult | None) -> Check:
    pool = m.system_pool(GIGANTIC_KB)
    if pool is None:
        return _check("pool_1g", False, "no 1G pool", "", blocks=True)
    if pool.total > 0:
        return _check("pool_1g", True, f"{pool.total} x 1G reserved, {pool.free} free")
    if tried is not None:
        if tried.obtained >= 1:
            return _check("pool_1g", True, "pool empty, but a 1G page was reserved at runtime and given back (--try)")
        return _check(
            "pool_1g",
            False,
            f"pool empty and a 1G page could not be reserved now: {tried.error or 'kernel gave 0'}",
            "hugeload boot-config --pages-1g N --apply, then update-grub and reboot",
            blocks=True,
        )
    return _check(
        "pool_1g",
        False,
        "pool empty; runtime reservation not tried (hugeload doctor --try tests it)",
        "hugeload reserve --count N --page-size 1g",
        warn=True,
    )


def check_mount_1g(m) -> Check:
    mounts = [x.path for x in m.mounts if x.page_size_kb == GIGANTIC_KB]
    return _check(
        "mount_1g",
        bool(mounts),
        f"1G hugetlbfs mounted at {', '.join(mounts)}" if mounts else "no 1G hugetlbfs mount",
        "hugeload mount --page-size 1g",
        warn=True,
    )


def check_boot(m) -> Check:
    wanted = m.boot.hugepages
    pool = m.system_pool(GIGANTIC_KB)
    if GIGANTIC_KB not in wanted:
        return _check(
            "boot_params",
            True,
            "no 1G pages reserved at boot; runtime reservation is used (boot-time is more reliable on busy machines)",
        )
    got = pool.total if pool else 0
    ok = got >= wanted[GIGANTIC_KB]
    return _check(
        "boot_params",
        ok,
        f"boot command line asks for {wanted[GIGANTIC_KB]} x 1G, pool has {got}",
        "free memory was too fragmented at boot: lower hugepages= or reserve earlier (hugeload boot-config)",
        warn=True,
    )


def check_cgroup(m) -> Check:
    lim = next((x for x in m.cgroup.limits if x.page_size_kb == GIGANTIC_KB), None)
    where = f" (in a {m.cgroup.container} container)" if m.cgroup.container else ""
    if lim is None or lim.limit_bytes is None:
        return _check("cgroup", True, f"no hugetlb limit on 1G pages for this cgroup{where}")
    if lim.limit_bytes < GiB:
        return _check(
            "cgroup",
            False,
            f"cgroup limits 1G pages to {lim.limit_bytes} bytes ({lim.path}){where}",
            f"raise the limit: echo max > /{lim.path}  (or the container's hugepages-1Gi limit)",
            blocks=True,
        )
    return _check(
        "cgroup",
        False,
        f"cgroup allows {lim.limit_bytes // GiB} x 1G ({lim.path}){where}",
        f"raise the limit if models need more: echo max > /{lim.path}",
        warn=True,
    )


def check_thp(m) -> Check:
    mode = m.thp.enabled
    if mode is None:
        return _check("thp", False, "no transparent huge pages", "", warn=True)
    return _check(
        "thp",
        mode in ("madvise", "always"),
        f"THP mode {mode}, defrag {m.thp.defrag}",
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        warn=True,
    )


def check_memory(m) -> Check:
    avail = m.meminfo.get("MemAvailable", 0) * KiB
    pressure = m.pressure.some_avg10 if m.pressure else 0.0
    detail = f"{avail / GiB:.1f} GiB available"
    if pressure > 1.0:
        detail += f", memory pressure {pressure:.1f}% (some avg10)"
    return _check(
        "memory",
        avail >= GiB and pressure <= 1.0,
        detail,
        "free memory before reserving: sync; echo 3 > /proc/sys/vm/drop_caches",
        warn=True,
    )


def check_virtualization(m) -> Check:
    if not m.cpu.hypervisor:
        return _check("virtualization", True, "bare metal")
    return _check(
        "virtualization",
        False,
        "running under a hypervisor: a guest's TLB entries are no larger than the host's backing pages, so 1G guest "
        "pages measure the same as 2M unless the host backs this VM with 1G pages (measured here: equal)",
        "back the VM's memory with 1G host pages (e.g. libvirt <memoryBacking><hugepages><page size='1' unit='G'/>)",
        warn=True,
    )


def check_buffers(m, engine) -> Check:
    """Where llama.cpp reads weights from on this CPU: the mapping (staging is enough) or heap
    copies (CPU_REPACK / AMX) that only the preload library's allocation path puts in huge pages.
    Informational: never a failure."""
    from hugeload.plan import buffers

    e = engine if engine is not None else buffers.engine_for(m.cpu.flags, None)
    return _check("llama_buffers", True, buffers.describe(e))


def check_hvo(m) -> Check:
    """HVO (vm.hugetlb_optimize_vmemmap) and what it saves, or would save, for the pools as they
    are.  The kernel does not say which pages were allocated while it was on: "up to"."""
    pools = sorted(((p.page_size_kb, p.total) for p in m.pools if p.node is None and p.total > 0), reverse=True)
    saving = format_bytes(plan_hvo.saved(pools))
    held = ", ".join(f"{n} x {page_size_name(kb)}" for kb, n in pools) or "no pages"
    per = "16 MiB per 1G page, 14 MiB per GiB of 2M pages"
    if m.hvo is None:
        return _check("hvo", True, f"no HVO in this kernel (vm.hugetlb_optimize_vmemmap, Linux 5.19+): {per} not saved")
    if m.hvo:
        return _check("hvo", True, f"HVO on: up to {saving} of struct page memory given back for the pools ({held})")
    return _check(
        "hvo",
        False,
        f"HVO available and off: the pools ({held}) keep {saving} of struct page memory it would give back ({per}); "
        "it applies to pages allocated while it is on",
        "hugeload reserve turns it on before reserving (and off after its last page); or: "
        "sysctl -w vm.hugetlb_optimize_vmemmap=1 before reserving",
        warn=True,
    )


def check_cma(m) -> Check:
    """Whether the running kernel can take 1 GB pages from a hugetlb_cma= area, and how many the
    area can still give."""
    cfg = m.kernel_config
    asked = m.boot.hugetlb_cma
    if cfg is None:
        # Informational: nothing about 1 GB pages depends on it, so no warning.
        return _check(
            "hugetlb_cma",
            True,
            "cannot tell whether this kernel can use hugetlb_cma= (CONFIG_CMA): no /proc/config.gz (modprobe configs) "
            f"and no /boot/config-{m.kernel_release or '<release>'}"
            + (f"; hugetlb_cma={asked} is set, CmaTotal {m.meminfo.get('CmaTotal', 0)} kB" if asked else ""),
        )
    if not cfg.enabled("CONFIG_CMA"):
        if asked:
            return _check(
                "hugetlb_cma",
                False,
                f"hugetlb_cma={asked} on the command line, but this kernel is built without CONFIG_CMA ({cfg.source})",
                "boot a kernel with CONFIG_CMA=y, or reserve 1 GB pages at boot: hugeload boot-config --pages-1g N",
                warn=True,
            )
        return _check(
            "hugetlb_cma",
            True,
            f"kernel built without CONFIG_CMA ({cfg.source}): no hugetlb_cma= area; 1 GB pages at boot "
            "(hugeload boot-config --pages-1g N) are the reliable way",
        )
    cma_kb = m.meminfo.get("CmaTotal", 0)
    if not asked:
        return _check(
            "hugetlb_cma",
            True,
            f"kernel can use hugetlb_cma= (CONFIG_CMA=y, {cfg.source}); none set: hugeload boot-config --cma SIZE "
            "sets an area that 1 GB reservations take from whatever the fragmentation",
        )
    if not cma_kb:
        return _check(
            "hugetlb_cma",
            False,
            f"hugetlb_cma={asked} on the command line, but no CMA area (CmaTotal 0 kB): "
            "the kernel could not reserve it",
            "dmesg | grep -i cma for why; a smaller hugetlb_cma=, or hugeload boot-config --pages-1g N",
            warn=True,
        )
    pool = m.system_pool(GIGANTIC_KB)
    left = plan_cma.pages_left(m.meminfo, pool.total if pool else 0, m.boot.hugepages.get(GIGANTIC_KB, 0))
    return _check(
        "hugetlb_cma",
        True,
        f"hugetlb_cma={asked}: CMA area {format_bytes(cma_kb * KiB)}, "
        f"{format_bytes(m.meminfo.get('CmaFree', 0) * KiB)} "
        f"free now; it can still give {left} x 1G (hugeload reserve --page-size 1g --count {left})",
    )


def run_checks(m, tried: TryResult | None = None, engine=None) -> list[Check]:
    """`engine`: a plan.buffers.Engine for the llama.cpp build in use (None: this CPU with
    get-llama.sh's default build, AMX off)."""
    return [
        check_kernel(m),
        check_cpu(m),
        check_hugetlbfs(m),
        check_privileges(m),
        check_pool_1g(m, tried),
        check_mount_1g(m),
        check_boot(m),
        check_cgroup(m),
        check_thp(m),
        check_memory(m),
        check_virtualization(m),
        check_buffers(m, engine),
        check_hvo(m),
        check_cma(m),
    ]


def usable_1g(checks: list[Check]) -> bool:
    return not any(c.blocks_1g for c in checks)
