"""The one page-size decision for every staged copy, placed on NUMA nodes or not.  Pure.

`hugeload stage FILE` and `hugeload stage FILE --node N` (or --replicate, --interleave) plan
their copies here, with the size rule of hugeload.pages (`first_page`: 1G from 1 GiB when whole
1 GB pages waste at most 1/8, the rule `plan`, `run` and the preload library apply too).  What
differs between a placed and an unplaced copy is only where its pages must come from: the
system's pool, or the pools of the nodes it is bound to.  An unplaced copy is the one-copy
case of a placement (plan.numa.Placement() gives one CopySpec with no nodes).
"""

from typing import NamedTuple

from hugeload import pages
from hugeload.errors import HugeloadError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize, Policy
from hugeload.plan import numa as plan_numa
from hugeload.units import KiB, ceil_div


class CopyPlan(NamedTuple):
    node: int  # recorded for the copy: -1 when not placed or interleaved
    bind: tuple[int, ...]  # nodes its pages must come from; () = wherever the kernel puts them
    page_size_kb: int
    pages: int
    reason: str  # why this page size
    needs: tuple  # plan.numa.NodeNeed per bound node (empty when not placed)


def pages_needed(sizes: list[int], kb: int) -> int:
    """Each file is staged on its own and takes at least one page (an empty file too)."""
    return sum(max(1, ceil_div(s, kb * KiB)) for s in sizes)


def choose_page_size(
    sizes: list[int],
    requested: PageSize | None,
    offered: list[int],
    fits_1g: bool,
    policy: Policy = pages.DEFAULT_POLICY,
    where: str = "the 1G pool",
) -> tuple[int, str]:
    """(kB, reason) for one copy.  A requested size is taken as given (an explicit size on one
    object the caller names; see hugeload.pages).  Auto: pages.first_page(), where 1G must also
    be obtainable (`fits_1g`: the pool holds the copy now or may be grown); else 2M."""
    if requested is not None:
        if requested.kb not in offered:
            raise UsageError(f"this kernel offers no {requested.label} huge pages")
        return requested.kb, f"{requested.label} requested"
    if PAGE_2M.kb not in offered:
        raise HugeloadError("this kernel offers no 2M huge pages")
    if pages.first_page(sizes, None, policy) == PAGE_1G and PAGE_1G.kb in offered:
        if fits_1g:
            return PAGE_1G.kb, f"{pages.why(sizes, None, policy)}, and {where} can hold it"
        need = pages_needed(sizes, PAGE_1G.kb)
        return PAGE_2M.kb, (
            f"{where} cannot hold {need} page(s); using 2M "
            f"(hugeload reserve --count {need} --page-size 1g, or --reserve)"
        )
    return PAGE_2M.kb, pages.why(sizes, None, policy) if PAGE_1G.kb in offered else "no 1G pages on this kernel"


def fits(spec: plan_numa.CopySpec, kb: int, sizes: list[int], system_available: int, nodes: list) -> bool:
    """Whether the pools a copy's pages come from hold it now."""
    need = pages_needed(sizes, kb)
    if not spec.bind:
        return system_available >= need
    return not any(n.missing for n in plan_numa.node_needs(spec, kb, need, nodes))


def plan_copies(
    sizes: list[int],
    requested: PageSize | None,
    offered: list[int],
    placement: plan_numa.Placement,
    reserve: bool,
    system_available_1g: int,
    nodes: list,
    name: str,
    policy: Policy = pages.DEFAULT_POLICY,
) -> list[CopyPlan]:
    """One CopyPlan per copy the placement asks for.  `system_available_1g`: free 1G pages
    nobody has promised to a mapping; `nodes`: probe.numa.Node values (only read for placed
    copies).  Raises PoolError, before anything is reserved, when a node cannot hold its share
    (plan.numa.check_fits)."""
    out = []
    for spec in placement.copies():
        where = "the 1G pool" if not spec.bind else f"the 1G pool of node(s) {','.join(map(str, spec.bind))}"
        fits_1g = PAGE_1G.kb in offered and (reserve or fits(spec, PAGE_1G.kb, sizes, system_available_1g, nodes))
        kb, reason = choose_page_size(sizes, requested, offered, fits_1g, policy, where)
        n = pages_needed(sizes, kb)
        needs = tuple(plan_numa.node_needs(spec, kb, n, nodes)) if spec.bind else ()
        plan_numa.check_fits(list(needs), reserve, name)
        out.append(CopyPlan(spec.node, spec.bind, kb, n, reason, needs))
    return out
