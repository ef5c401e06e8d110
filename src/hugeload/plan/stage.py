"""The one page-size decision for every staged copy, placed on NUMA nodes or not.  Pure.

`hugeload stage FILE` and `hugeload stage FILE --node N` (or --replicate, --interleave) plan
their copies here, with the size rule of hugeload.pages (`first_page`: 1G from 1 GiB when whole
1 GB pages waste at most 1/8, the rule `plan`, `run` and the preload library apply too).  What
differs between a placed and an unplaced copy is only where its pages must come from: the
system's pool, or the pools of the nodes it is bound to.  An unplaced copy is the one-copy
case of a placement (plan.numa.Placement() gives one CopySpec with no nodes).

Mixed page sizes: where the rule (or the user) asks for 1G and the pool holds k >= 1 of the
n pages a one-file copy needs, the copy is made of two parts instead of falling back to 2M for
all of it: the file's first k GiB in 1G pages and the rest in 2M pages (`CopyPlan.tail_pages`),
which the preload library maps side by side as one range.  A one-file copy is split when it
is unplaced (the system's pool) or bound to one node (that node's pools hold both parts: each
copy of --replicate is planned on its own node); an interleaved copy and a multi-file model
stay in one page size (the 1 GB pages a short pool has would have to be shared out between
nodes or files, and the library maps one file's parts as one range).
"""

from typing import NamedTuple

from hugeload import pages
from hugeload.errors import HugeloadError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize, Policy
from hugeload.plan import numa as plan_numa
from hugeload.units import GiB, KiB, ceil_div


class CopyPlan(NamedTuple):
    node: int  # recorded for the copy: -1 when not placed or interleaved
    bind: tuple[int, ...]  # nodes its pages must come from; () = wherever the kernel puts them
    page_size_kb: int
    pages: int
    reason: str  # why this page size
    needs: tuple  # plan.numa.NodeNeed per bound node (empty when not placed)
    tail_pages: int = 0  # 2M pages holding the file past its first `pages` GiB; 0: one part

    @property
    def split_at(self) -> int:
        """Bytes of the file in the first (1G) part, or 0 when the copy is one part."""
        return self.pages * self.page_size_kb * KiB if self.tail_pages else 0

    def parts(self) -> list[tuple[int, int]]:
        """(page kB, pages) of each part, first part first."""
        return [(self.page_size_kb, self.pages)] + ([(PAGE_2M.kb, self.tail_pages)] if self.tail_pages else [])


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


def splittable(bind: tuple[int, ...], sizes: list[int]) -> bool:
    """Whether a copy bound to `bind` of files of `sizes` may be split into 1G and 2M parts."""
    return len(bind) <= 1 and len(sizes) == 1


def split_copy(plan: CopyPlan, sizes: list[int], available_1g: int) -> CopyPlan:
    """The copy `plan` (1G, one file, unplaced or bound to one node) with its first
    `available_1g` GiB in 1G pages and the rest in 2M; `plan` itself when it is not such a copy
    or the pool holds all or none of it.  The `needs` of a bound copy are left to the caller."""
    if plan.page_size_kb != PAGE_1G.kb or not splittable(plan.bind, sizes) or plan.tail_pages:
        return plan
    k = min(available_1g, plan.pages)
    if k <= 0 or k >= plan.pages:
        return plan
    tail = pages_needed([sizes[0] - k * GiB], PAGE_2M.kb)
    where = f"node {plan.bind[0]}'s 1G pool" if plan.bind else "the 1G pool"
    reason = f"{plan.reason.split(';')[0]}; {where} holds {k} of {plan.pages} page(s): the rest in 2M pages"
    return plan._replace(pages=k, tail_pages=tail, reason=reason)


def fits(spec: plan_numa.CopySpec, kb: int, sizes: list[int], system_available: int, nodes: list) -> bool:
    """Whether the pools a copy's pages come from hold it now."""
    need = pages_needed(sizes, kb)
    if not spec.bind:
        return system_available >= need
    return not any(n.missing for n in plan_numa.node_needs(spec, kb, need, nodes))


def part_needs(plan: CopyPlan, nodes: list) -> tuple:
    """plan.numa.NodeNeed for every part of a bound copy, from `nodes` (probe.numa.Node); () when
    it is not bound."""
    if not plan.bind:
        return ()
    spec = plan_numa.CopySpec(plan.node, plan.bind)
    return tuple(need for kb, n in plan.parts() for need in plan_numa.node_needs(spec, kb, n, nodes))


def node_available_1g(bind: tuple[int, ...], nodes: list) -> int:
    """Free 1G pages in the one node's pool a copy is bound to."""
    (node,) = bind
    pool = {n.node: n for n in nodes}[node].pools.get(PAGE_1G.kb)
    return max(0, pool.free) if pool else 0


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
    mixed: bool = True,
) -> list[CopyPlan]:
    """One CopyPlan per copy the placement asks for.  `system_available_1g`: free 1G pages
    nobody has promised to a mapping; `nodes`: probe.numa.Node values (only read for placed
    copies).  Raises PoolError, before anything is reserved, when a node cannot hold its share
    (plan.numa.check_fits).  `mixed`: a one-file copy the 1G pool it draws from is short of
    may be split (split_copy); else it is all 1G or all 2M, as the rule says."""
    out = []
    for spec in placement.copies():
        where = "the 1G pool" if not spec.bind else f"the 1G pool of node(s) {','.join(map(str, spec.bind))}"
        holds_1g = PAGE_1G.kb in offered and fits(spec, PAGE_1G.kb, sizes, system_available_1g, nodes)
        kb, reason = choose_page_size(sizes, requested, offered, holds_1g or reserve, policy, where)
        if (
            mixed
            and not reserve
            and not holds_1g
            and splittable(spec.bind, sizes)
            and PAGE_1G.kb in offered
            and (requested == PAGE_1G or (requested is None and pages.first_page(sizes, None, policy) == PAGE_1G))
        ):
            # the rule wants 1G and the pool is short: the pages it has, 2M for the rest
            have = node_available_1g(spec.bind, nodes) if spec.bind else system_available_1g
            whole = CopyPlan(spec.node, spec.bind, PAGE_1G.kb, pages_needed(sizes, PAGE_1G.kb), reason, ())
            parts = split_copy(whole._replace(reason=pages.why(sizes, requested, policy)), sizes, have)
            if parts.tail_pages:
                needs = part_needs(parts, nodes)
                plan_numa.check_fits(list(needs), reserve, name)  # the node's 2M pool must hold the rest
                out.append(parts._replace(needs=needs))
                continue
        n = pages_needed(sizes, kb)
        needs = tuple(plan_numa.node_needs(spec, kb, n, nodes)) if spec.bind else ()
        if mixed and reserve and kb == PAGE_1G.kb and spec.bind and splittable(spec.bind, sizes):
            # the 1G pages the node gives are read back and the rest taken in 2M (act/store
            # reserve_for): refused now only when the node cannot hold the copy in any page size
            needs_2m = plan_numa.node_needs(spec, PAGE_2M.kb, pages_needed(sizes, PAGE_2M.kb), nodes)
            have_1g = node_available_1g(spec.bind, nodes) * (PAGE_1G.kb // PAGE_2M.kb)
            plan_numa.check_fits([x._replace(free=x.free + have_1g) for x in needs_2m], reserve, name)
        else:
            plan_numa.check_fits(list(needs), reserve, name)
        out.append(CopyPlan(spec.node, spec.bind, kb, n, reason, needs))
    return out
