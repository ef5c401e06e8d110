"""NUMA placement decisions: which copies a stage makes, on which nodes, and whether each
node can hold its copy.  Pure functions over probe.numa.Node values.  The page size of each
copy is plan/stage.py's (the one rule for placed and unplaced copies)."""

import enum
from dataclasses import dataclass
from typing import NamedTuple

from hugeload.errors import PoolError, UsageError
from hugeload.pages import PAGE_2M
from hugeload.pages import name as page_size_name
from hugeload.units import KiB, ceil_div, format_bytes

INTERLEAVED = -1  # the node of a copy spread over several nodes (contract C1)


class Mode(enum.Enum):
    DEFAULT = "default"  # the kernel's choice: no binding, one copy (node -1)
    NODE = "node"  # one copy, every page on one node
    REPLICATE = "replicate"  # one copy per node
    INTERLEAVE = "interleave"  # one copy, pages round-robin over the nodes


@dataclass(frozen=True)
class Placement:
    mode: Mode = Mode.DEFAULT
    nodes: tuple[int, ...] = ()

    @property
    def placed(self) -> bool:
        return self.mode is not Mode.DEFAULT

    def copies(self) -> list["CopySpec"]:
        """(the node recorded for the copy, the nodes its pages are bound to)."""
        if self.mode is Mode.NODE or self.mode is Mode.REPLICATE:
            return [CopySpec(n, (n,)) for n in self.nodes]
        if self.mode is Mode.INTERLEAVE:
            return [CopySpec(INTERLEAVED, self.nodes)]
        return [CopySpec(INTERLEAVED, ())]

    def describe(self) -> str:
        if self.mode is Mode.NODE:
            return f"on node {self.nodes[0]}"
        if self.mode is Mode.REPLICATE:
            return f"one copy on each of nodes {','.join(map(str, self.nodes))}"
        if self.mode is Mode.INTERLEAVE:
            return f"interleaved over nodes {','.join(map(str, self.nodes))}"
        return "wherever the kernel puts it"


class CopySpec(NamedTuple):
    node: int  # -1: interleaved
    bind: tuple[int, ...]  # nodes its pages may come from; () = no binding


def parse_nodes(text: str) -> tuple[int, ...]:
    """'0,1' or '0-3' -> node ids, in order, without repeats."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            ids = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise UsageError(f"node list {text!r} is not like 0,1 or 0-3") from None
        if not ids or int(lo) < 0:
            raise UsageError(f"node list {text!r} is not like 0,1 or 0-3")
        out += [i for i in ids if i not in out]
    return tuple(out)


def placement(node: int | None, nodes: str | None, replicate: bool, interleave: bool, existing: list[int]) -> Placement:
    """The placement the load options ask for.  `existing`: the machine's node ids."""
    if node is not None and (nodes or replicate or interleave):
        raise UsageError(
            "--node stages one copy on one node: do not combine it with --nodes, --replicate or --interleave"
        )
    if replicate and interleave:
        raise UsageError(
            "--replicate and --interleave exclude each other (a copy per node, or one copy spread over them)"
        )
    if nodes and not (replicate or interleave):
        replicate = True  # --nodes 0,1 alone means a copy on each
    if node is not None:
        chosen: tuple[int, ...] = (node,)
        mode = Mode.NODE
    elif replicate or interleave:
        chosen = parse_nodes(nodes) if nodes else tuple(existing)
        mode = Mode.REPLICATE if replicate else Mode.INTERLEAVE
    else:
        return Placement()
    return Placement(mode, chosen)


def check_nodes(p: Placement, nodes: list) -> None:
    """Every named node exists and has memory; --interleave/--replicate need two nodes."""
    by_id = {n.node: n for n in nodes}
    for i in p.nodes:
        if i not in by_id:
            have = ", ".join(map(str, sorted(by_id))) or "none (kernel without NUMA)"
            raise UsageError(f"NUMA node {i} does not exist (nodes: {have})")
        if not by_id[i].has_memory:
            raise UsageError(f"NUMA node {i} has no memory of its own (CPUs only): stage on a node with memory")
    if p.mode in (Mode.REPLICATE, Mode.INTERLEAVE) and len(p.nodes) < 2:
        what = "replicate" if p.mode is Mode.REPLICATE else "interleave"
        raise UsageError(
            f"--{what} needs at least two nodes with memory (this machine has {len(p.nodes)}): "
            "use --node N or no placement"
        )


class NodeNeed(NamedTuple):
    node: int
    page_size_kb: int
    pages: int  # pages this node must give the copy
    free: int  # free pages in the node's pool now
    mem_free_kb: int  # node memory that could become new pages

    @property
    def missing(self) -> int:
        return max(0, self.pages - self.free)

    @property
    def can_reserve(self) -> bool:
        return self.missing * self.page_size_kb <= self.mem_free_kb


def split(pages: int, nodes: tuple[int, ...]) -> dict[int, int]:
    """Pages per node when `pages` are interleaved round-robin over `nodes`."""
    base, extra = divmod(pages, len(nodes))
    return {n: base + (1 if i < extra else 0) for i, n in enumerate(nodes)}


def node_needs(spec: CopySpec, kb: int, pages: int, nodes: list) -> list[NodeNeed]:
    by_id = {n.node: n for n in nodes}
    out = []
    for n, count in split(pages, spec.bind).items():
        pool = by_id[n].pools.get(kb)
        out.append(NodeNeed(n, kb, count, pool.free if pool else 0, by_id[n].mem_free_kb))
    return out


def check_fits(needs: list[NodeNeed], reserve: bool, name: str) -> None:
    """One line, before anything is reserved, when a node cannot hold its share."""
    for need in needs:
        if not need.missing:
            continue
        size = page_size_name(need.page_size_kb)
        if not reserve:
            raise PoolError(
                f"node {need.node}'s {size} pool has {need.free} free page(s), {name} needs {need.pages} there: "
                f"run `hugeload reserve --node {need.node} --count {need.missing} --page-size {size.lower()}` "
                f"or load with --reserve; nothing was staged"
            )
        if not need.can_reserve:
            raise PoolError(
                f"node {need.node} is too small for its copy of {name}: it needs "
                f"{format_bytes(need.missing * need.page_size_kb * KiB)} more {size} pages and has "
                f"{format_bytes(need.mem_free_kb * KiB)} free; nothing was staged"
            )


class NodeFit(NamedTuple):
    node: int
    cpus: tuple[int, ...]
    mem_total_kb: int
    mem_free_kb: int
    page_size_kb: int
    pages: int
    pool_free: int
    fits_now: bool  # the node's pool already holds a copy
    fits: bool  # its pool plus its free memory can hold a copy
    note: str


def fit_nodes(total: int, nodes: list, kb: int) -> list[NodeFit]:
    """For `plan --nodes` and `doctor`: per node, what one copy in `kb` pages needs."""
    pages = ceil_div(total, kb * KiB) if total else 0
    out = []
    for n in nodes:
        pool = n.pools.get(kb)
        free = pool.free if pool else 0
        missing = max(0, pages - free)
        fits = n.has_memory and missing * kb <= n.mem_free_kb
        if not n.has_memory:
            note = "no memory of its own"
        elif free >= pages:
            note = "its pool holds a copy now"
        elif fits:
            note = f"reserve {missing} more {page_size_name(kb)} page(s) on it (load --reserve does)"
        else:
            note = (
                f"too small: needs {format_bytes(missing * kb * KiB)} more pages, "
                f"{format_bytes(n.mem_free_kb * KiB)} free"
            )
        out.append(NodeFit(n.node, n.cpus, n.mem_total_kb, n.mem_free_kb, kb, pages, free, free >= pages, fits, note))
    return out


def doctor_check(nodes: list, model_bytes: int | None = None, kb: int = PAGE_2M.kb):
    """The `doctor` line about NUMA: how many nodes, and whether a model fits one node."""
    from hugeload.plan.doctor import Check

    mem = [n for n in nodes if n.has_memory]
    if len(nodes) <= 1:
        return Check("numa", "pass", f"{len(nodes) or 1} node: placement does not matter here", "")
    detail = f"{len(nodes)} nodes ({len(mem)} with memory): " + ", ".join(
        f"node {n.node} {format_bytes(n.mem_total_kb * KiB)}" for n in nodes
    )
    if model_bytes is None:
        return Check("numa", "pass", detail + "; load with --node N or --replicate, run with --node N", "")
    fits = [f for f in fit_nodes(model_bytes, nodes, kb) if f.fits]
    if fits:
        return Check(
            "numa",
            "pass",
            detail + f"; a {format_bytes(model_bytes)} copy fits node(s) " + ",".join(str(f.node) for f in fits),
            "",
        )
    return Check(
        "numa",
        "warn",
        detail + f"; a {format_bytes(model_bytes)} copy fits no single node",
        "load with --interleave (one copy spread over the nodes) and run without --node",
    )


def format_cpulist(cpus) -> str:
    """(0, 1, 2, 3, 8) -> '0-3,8', the kernel's cpulist form."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)
