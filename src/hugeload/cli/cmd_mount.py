"""`hugeload mount` / `hugeload umount`: hugetlbfs mounts, the seed's dual layout by default."""

from hugeload import pages
from hugeload.act import mounts as act_mounts
from hugeload.cli import render
from hugeload.cli.common import add_json, add_state_dir, octal, require_hugetlb
from hugeload.errors import UsageError
from hugeload.units import parse_size


def _sizes(text: str) -> list[int]:
    if text == "all":
        return [p.kb for p in pages.HUGE]
    return [pages.parse(text, ("1g", "2m"), auto=False).kb]


def register(sub) -> None:
    p = sub.add_parser("mount", help="mount hugetlbfs (default: 1G at /mnt/hugepages-1gb and 2M at /mnt/hugepages-2mb)")
    p.add_argument("--page-size", default="all", help="1g, 2m or all (default)")
    p.add_argument("--dir", help="mount point (only with a single page size)")
    p.add_argument("--size", help="limit of the mount, a multiple of the page size")
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--mode", type=octal, help="octal mode of the mount's root, e.g. 1770")
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_mount)

    p = sub.add_parser("umount", help="unmount hugetlbfs mounts hugeload made (or --dir)")
    p.add_argument("--page-size", default="all", help="1g, 2m or all (default)")
    p.add_argument("--dir", help="this mount point")
    p.add_argument(
        "--force", action="store_true", help="unmount even with files open or staged (their pages are freed)"
    )
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_umount)


def run_mount(args) -> int:
    sizes = _sizes(args.page_size)
    if args.dir and len(sizes) > 1:
        raise UsageError("--dir needs a single --page-size (1g or 2m)")
    require_hugetlb(args.root)
    size = parse_size(args.size) if args.size else None
    results = []
    for kb in sizes:
        results.append(
            act_mounts.mount(args.root, kb, args.dir, size, args.uid, args.gid, args.mode, state_dir=args.state_dir)
        )
    if args.json:
        render.print_json({"mounts": results})
    for r in results if not args.json else []:
        render.console.print(
            f"{r.path}: {pages.name(r.page_size_kb)} hugetlbfs {'mounted' if r.changed else 'already mounted'}"
        )
    return 0


def run_umount(args) -> int:
    if args.dir:
        paths = [args.dir]
    else:
        sizes = _sizes(args.page_size)
        recorded = [m["path"] for m in act_mounts.hugeload_mounts(args.state_dir) if m["page_size_kb"] in sizes]
        paths = recorded or [act_mounts.default_dir(kb) for kb in sizes]
    if not args.force:
        for path in paths:  # all or nothing: check every mount before unmounting any
            act_mounts.check_idle(args.root, path)
    done = []
    for path in paths:
        if act_mounts.umount(args.root, path, args.force, state_dir=args.state_dir):
            done.append(path)
    if args.json:
        render.print_json({"unmounted": done})
    else:
        render.console.print("\n".join(f"{p}: unmounted" for p in done) or "nothing to unmount")
    return 0
