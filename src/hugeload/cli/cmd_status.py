"""`hugeload status`: pools, mounts, THP and processes using huge pages."""

from hugeload.act import ledger
from hugeload.cli import render
from hugeload.cli.common import add_json, add_state_dir, require_hugetlb
from hugeload.errors import HugeloadError, UsageError
from hugeload.pages import name as page_size_name
from hugeload.probe import mounts, pools, procs, thp
from hugeload.units import format_bytes


def register(sub) -> None:
    p = sub.add_parser("status", help="huge page pools, mounts, THP and processes using huge pages")
    p.add_argument("--pid", type=int, help="show this process's large mappings and their page sizes")
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def shares(root, state_dir=None) -> list[dict] | None:
    """Pages hugeload added to the pools, per owner (ledger.Owner), with whether a process
    owner still runs; None when the ledger cannot be read (not root)."""
    try:
        data = ledger.load(state_dir)
    except (OSError, HugeloadError):
        return None
    out = []
    for key, owners in sorted(data["shares"].items()):
        kb, node = ledger.parse_pool_key(key)
        for text, n in sorted(owners.items()):
            o = ledger.Owner.parse(text)
            out.append(
                {"page_size_kb": kb, "node": node, "owner": text, "kind": o.kind, "pages": n, "alive": o.alive(root)}
            )
    return out


def collect(root, pid=None, state_dir=None) -> dict:
    require_hugetlb(root)
    if pid is not None:
        proc = procs.read_process(root, pid)
        if proc is None:
            raise UsageError(f"no process with PID {pid}")
        processes = [proc]
    else:
        processes = procs.huge_page_users(root)
    return {
        "pools": pools.read_pools(root),
        "mounts": mounts.read_mounts(root),
        "thp": thp.read_thp(root),
        "processes": processes,
        "hugeload_pages": shares(root, state_dir),
    }


def run(args) -> int:
    data = collect(args.root, args.pid, args.state_dir)
    if args.json:
        render.print_json(data)
        return 0
    rows = [
        [page_size_name(p.page_size_kb), "all" if p.node is None else p.node, p.total, p.free, p.reserved, p.surplus]
        for p in data["pools"]
    ]
    render.console.print(render.table("Pools", ["page", "node", "total", "free", "reserved", "surplus"], rows))
    if data["mounts"]:
        rows = [
            [
                m.path,
                page_size_name(m.page_size_kb),
                format_bytes(m.size_bytes) if m.size_bytes else "unlimited",
                f"{m.uid}:{m.gid}",
                f"{m.mode:o}",
            ]
            for m in data["mounts"]
        ]
        render.console.print(render.table("hugetlbfs mounts", ["path", "page", "size", "owner", "mode"], rows))
    else:
        render.console.print("hugetlbfs mounts: none (hugeload mount creates them)")
    if data["hugeload_pages"]:
        rows = [
            [
                page_size_name(s["page_size_kb"]),
                "all" if s["node"] is None else s["node"],
                s["owner"],
                s["pages"],
                "" if s["kind"] not in ledger.PROCESS_KINDS else "running" if s["alive"] else "gone (hugeload gc)",
            ]
            for s in data["hugeload_pages"]
        ]
        render.console.print(
            render.table("Pages hugeload reserved", ["page", "node", "owner", "pages", "process"], rows)
        )
    t = data["thp"]
    render.console.print(f"THP: enabled={t.enabled} defrag={t.defrag}")
    if data["processes"]:
        rows = []
        for p in data["processes"]:
            rows.append([p.pid, p.comm, format_bytes(p.hugetlb_kb * 1024), format_bytes(p.vmpte_kb * 1024), "", "", ""])
            for m in p.mappings:
                rows.append(["", "", "", "", m.path, format_bytes(m.size), page_size_name(m.kernel_page_kb)])
        render.console.print(
            render.table("Processes", ["pid", "name", "hugetlb", "page tables", "mapping", "size", "page"], rows)
        )
    else:
        render.console.print("processes using huge pages: none")
    return 0
