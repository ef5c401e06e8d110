"""`hugeload bench hvo`: the memory HVO saves, measured with and without it on the same
reservation (the same page size and count, reserved and given back in turn).

Three measures of what the reservation takes, each read just before and after the pool write:
  used       MemTotal - MemFree - free pages on per-CPU lists.  The per-CPU lists matter: a
             runtime 1 GB page drains them (alloc_contig_range) and HVO's freed vmemmap pages
             land on them, each moving MemFree by tens of MiB that are free all along.
  available  MemTotal - MemAvailable, the measure users know; it misses the per-CPU lists.
  memmap     the kernel's count of struct page memory (/proc/vmstat nr_memmap_pages +
             nr_memmap_boot_pages, Linux 6.11+), which HVO lowers by exactly what it frees.
The saving is a measure's median without HVO less its median with it, over the rounds.
"""

import statistics

from hugeload.act import hvo as act_hvo
from hugeload.act import pools as act_pools
from hugeload.bench.common import bench_owner
from hugeload.errors import NotSupported, UsageError
from hugeload.pages import name as page_size_name
from hugeload.plan import hvo as plan_hvo
from hugeload.probe.hvo import read_hvo
from hugeload.probe.memory import read_meminfo, read_pcp_pages, read_vmstat
from hugeload.units import GiB, KiB

MEASURES = ("used", "available", "memmap")


def snapshot(root) -> dict[str, int | None]:
    """The three measures now, in kB."""
    mem = read_meminfo(root)
    return {
        "used": plan_hvo.used_kb(mem, read_pcp_pages(root)),
        "available": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0),
        "memmap": plan_hvo.memmap_kb(read_vmstat(root)),
    }


def one_round(root, kb: int, count: int, on: bool, state_dir=None) -> dict[str, int | None]:
    """Reserve `count` pages with HVO on or off, read what they took (kB per measure), give
    them back (which puts HVO back off)."""
    owner = bench_owner()
    before = snapshot(root)
    result = act_pools.reserve(
        root,
        kb,
        count,
        owner=owner,
        state_dir=state_dir,
        retry_seconds=0.0,
        prefault=False,
        hvo_mode=act_hvo.Hvo.AUTO if on else act_hvo.Hvo.LEAVE,
    )
    try:
        after = snapshot(root)
    finally:
        act_pools.release(root, kb, owner=owner, state_dir=state_dir)
    if on != result.hvo.startswith("on"):
        raise NotSupported(f"HVO did not follow the round (wanted {'on' if on else 'off'}): {result.hvo}")
    out: dict[str, int | None] = {}
    for k in MEASURES:
        b, a = before[k], after[k]
        out[k] = None if a is None or b is None else a - b
    return out


def run(root, kb: int, count: int, rounds: int, state_dir=None, log=lambda msg: None) -> dict:
    if count <= 0 or rounds <= 0:
        raise UsageError("--count and --rounds must be positive")
    value = read_hvo(root)
    if value is None:
        raise NotSupported("this kernel has no HVO (vm.hugetlb_optimize_vmemmap, Linux 5.19+)")
    if value != 0:
        raise UsageError(
            f"HVO is {value} (set outside hugeload): the run without it would have to change it; "
            "set it to 0 for the benchmark, or read `hugeload doctor` for the computed saving"
        )
    taken: dict[str, dict[str, list[int]]] = {"off": {m: [] for m in MEASURES}, "on": {m: [] for m in MEASURES}}
    for i in range(rounds):
        for label in ("off", "on"):
            got = one_round(root, kb, count, label == "on", state_dir)
            for m, v in got.items():
                if v is not None:
                    taken[label][m].append(v)
            log(f"round {i + 1} HVO {label}: " + ", ".join(f"{m} +{v} kB" for m, v in got.items() if v is not None))
    size = count * kb * KiB
    out: dict = {
        "page_size": page_size_name(kb),
        "count": count,
        "rounds": rounds,
        "reserved_bytes": size,
        "computed_bytes": plan_hvo.saved([(kb, count)]),
        "measures": {},
    }
    for m in MEASURES:
        off, on = taken["off"][m], taken["on"][m]
        if not off or not on:
            continue
        saved = (statistics.median(off) - statistics.median(on)) * KiB
        out["measures"][m] = {
            "off_kb": off,
            "on_kb": on,
            "saved_bytes": saved,
            "saved_per_gib_bytes": saved * GiB / size,
        }
    return out
