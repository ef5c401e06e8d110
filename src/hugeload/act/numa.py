"""NUMA for `hugeload run`: the node an engine is bound to, and whether the model's copies suit
it.  Staging copies on nodes is the store's (act/store/stage.py); memory binding is
act/mempolicy.py (bind_process and file_pages_by_node are named here too, for the callers
that know them from here)."""

import os

from hugeload.act import store
from hugeload.act.mempolicy import bind_process, file_pages_by_node
from hugeload.errors import UsageError
from hugeload.plan import numa as plan_numa
from hugeload.probe import numa as probe_numa

__all__ = ["bind_process", "check_copies_for_node", "check_run_node", "file_pages_by_node", "spanning_note"]


def check_run_node(node: int, root="/") -> probe_numa.Node:
    """The node `hugeload run --node` binds to: it exists, has CPUs and memory."""
    nodes = {n.node: n for n in probe_numa.read_nodes(root)}
    if node not in nodes:
        have = ", ".join(map(str, sorted(nodes))) or "none (kernel without NUMA)"
        raise UsageError(f"NUMA node {node} does not exist (nodes: {have})")
    n = nodes[node]
    if not n.cpus:
        raise UsageError(f"NUMA node {node} has no CPUs to run on")
    if not n.has_memory:
        raise UsageError(f"NUMA node {node} has no memory of its own: bind to a node with memory")
    allowed = set(os.sched_getaffinity(0))
    if not allowed & set(n.cpus):
        raise UsageError(f"none of node {node}'s CPUs ({','.join(map(str, n.cpus))}) is allowed for this process")
    return n


def manifest_of(path: str, state_dir=None) -> store.Manifest | None:
    """The manifest of the model whose ready staged copy serves `path`."""
    staged = store.find_staged(path, state_dir)
    if staged is None:
        return None
    for m in store.manifests(state_dir):
        if any(f.staged == staged.staged for f in m.all_files):
            return m
    return None


def check_copies_for_node(node: int, paths: list[str], state_dir=None) -> None:
    """`run --node N` with a model whose copies are all bound to other nodes would read
    every weight across the interconnect: refuse, in one line, before reserving anything."""
    for path in paths:
        m = manifest_of(path, state_dir)
        if m is None:
            continue
        nodes = [c.node for c in m.copies]
        if node not in nodes and plan_numa.INTERLEAVED not in nodes:
            raise UsageError(
                f"model {m.name!r} has copies on node(s) {','.join(map(str, nodes))} only, not on node {node}: "
                f"stage one there (hugeload load {m.source} --nodes {','.join(map(str, sorted({*nodes, node})))}) "
                f"or run on node {nodes[0]}"
            )


def spanning_note(paths: list[str], state_dir=None, root="/") -> str | None:
    """A note when this process may run on CPUs of several nodes but a model's only copy is
    bound to one of them: the threads on the other nodes read it remotely."""
    cpu_node = probe_numa.cpu_nodes(root)
    span = sorted({cpu_node[c] for c in os.sched_getaffinity(0) if c in cpu_node})
    if len(span) < 2:
        return None
    for path in paths:
        m = manifest_of(path, state_dir)
        if m is None:
            continue
        nodes = {c.node for c in m.copies}
        if plan_numa.INTERLEAVED not in nodes and not set(span) <= nodes:
            return (
                f"this engine may run on nodes {','.join(map(str, span))} but {m.name!r} is staged on node(s) "
                f"{','.join(map(str, sorted(nodes)))} only; pin it with --node N, "
                "or load with --replicate or --interleave"
            )
    return None
