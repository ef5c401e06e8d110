#!/usr/bin/env python3
"""Copy the files hugeload's probe reads into a fixture tree.

    python3 scripts/capture-fixture.py DEST

DEST becomes a directory that stands for `/`: `hugeload --root DEST status`
then probes it instead of the live machine.  The tree is what the unit tests
under tests/fixtures/machines/ are made of, and what to attach to a bug report
(read it first: it holds the kernel command line, mount points and the names of
this process's cgroups).

Standard library only.  CPUID is read through hugeload's native library when
hugeload is importable and written as DEST/cpuid.json; without it the tree has
no cpuid.json and the probe falls back to /proc/cpuinfo.
"""

import argparse
import glob
import json
import os
import sys
from pathlib import Path

# Files copied as they are, relative to the root.  Globs are expanded on the source.
FILES = [
    "sys/kernel/mm/hugepages/*/*",
    "sys/devices/system/node/node*/hugepages/*/*",
    "proc/mounts",
    "proc/filesystems",
    "proc/meminfo",
    "proc/buddyinfo",
    "proc/cmdline",
    "proc/pressure/memory",
    "proc/sys/kernel/osrelease",
    "proc/self/cgroup",
    "proc/self/status",
    "proc/1/cgroup",
    "sys/kernel/mm/transparent_hugepage/enabled",
    "sys/kernel/mm/transparent_hugepage/defrag",
    "sys/kernel/mm/transparent_hugepage/shmem_enabled",
    # Read by the probe to tell a pure v2 mount from a hybrid one (v2 under unified/).
    "sys/fs/cgroup/cgroup.controllers",
    "sys/fs/cgroup/unified/cgroup.controllers",
]
# Container markers: only their presence matters, so they are written empty.
MARKERS = [".dockerenv", "run/.containerenv"]
CGROUP_ROOT = "sys/fs/cgroup"

# (leaf, subleaf) pairs probe/cpu.py reads; Intel leaf 0x18's subleaves are added
# from its subleaf 0 (EAX = the last subleaf).  Leaf 2 holds Intel's TLB descriptors.
CPUID_LEAVES = [(0x0, 0), (0x2, 0), (0x80000000, 0), (0x80000005, 0), (0x80000006, 0), (0x80000019, 0), (0x18, 0)]
MAX_CPUID_SUBLEAF = 64


class Capture:
    def __init__(self, src: Path, dest: Path):
        self.src = src
        self.dest = dest
        self.written: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def read(self, rel: str) -> str | None:
        try:
            return (self.src / rel).read_text()
        except FileNotFoundError:
            self.skipped.append((rel, "missing"))
        except PermissionError:
            self.skipped.append((rel, "permission denied"))
        except OSError as e:  # write-only sysfs files (demote), vanished processes
            self.skipped.append((rel, e.strerror or type(e).__name__))
        return None

    def write(self, rel: str, text: str) -> None:
        out = self.dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        self.written.append(rel)

    def copy(self, rel: str) -> str | None:
        text = self.read(rel)
        if text is not None:
            self.write(rel, text)
        return text

    def expand(self, pattern: str) -> list[str]:
        if not glob.has_magic(pattern):
            return [pattern]
        matches = glob.glob(str(self.src / pattern))
        return sorted(os.path.relpath(m, self.src) for m in matches if os.path.isfile(m))


def first_cpuinfo_block(text: str) -> str:
    """The first processor's block: the probe reads nothing else, and the full file
    grows with every CPU."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line)
    return "\n".join(lines) + "\n\n"


def container_environ(text: str) -> str:
    """Only init's `container=` variable: the rest of its environment is nobody's business."""
    return "".join(item + "\0" for item in text.split("\0") if item.startswith("container="))


def own_cgroup_dir(cgroup_text: str, root_listing: list[str]) -> str | None:
    """This process's hugetlb cgroup directory, relative to the root (as probe/cgroup.py finds it)."""
    v2 = None
    for line in cgroup_text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "hugetlb" in controllers.split(","):
            return f"{CGROUP_ROOT}/hugetlb{path}".rstrip("/")
        if hid == "0" and controllers == "":
            v2 = path
    if v2 is None:
        return None
    unified = "unified" in root_listing and "cgroup.controllers" not in root_listing
    return f"{CGROUP_ROOT}{'/unified' if unified else ''}{v2}".rstrip("/")


def capture_cgroup(cap: Capture, cgroup_text: str | None) -> None:
    if cgroup_text is None:
        return
    try:
        listing = sorted(os.listdir(cap.src / CGROUP_ROOT))
    except OSError:
        listing = []
    d = own_cgroup_dir(cgroup_text, listing)
    if d is None:
        return
    try:
        names = sorted(n for n in os.listdir(cap.src / d) if n.startswith("hugetlb."))
    except OSError as e:
        cap.skipped.append((d, e.strerror or type(e).__name__))
        return
    for name in names:
        cap.copy(f"{d}/{name}")


def live_cpuid():
    try:
        from hugeload import native

        native.load()
        return native.cpuid
    except Exception as e:  # hugeload not importable or its library not built
        print(f"capture-fixture: no CPUID ({e}); the tree will have no cpuid.json", file=sys.stderr)
        return None


def source_cpuid(src: Path):
    """CPUID of the source: the live CPU for /, a tree's own cpuid.json otherwise."""
    if str(src) == "/":
        return live_cpuid()
    from hugeload.probe.cpu import fixture_cpuid

    return fixture_cpuid(src)


def cpuid_table(cpuid) -> dict[str, list[str]]:
    """{"0x80000005:0": ["0x...", ebx, ecx, edx]} for the leaves the probe reads."""
    table = {}
    leaves = list(CPUID_LEAVES)
    first_18 = cpuid(0x18, 0)
    if first_18 and first_18[0]:
        leaves += [(0x18, sub) for sub in range(1, min(first_18[0], MAX_CPUID_SUBLEAF) + 1)]
    for leaf, sub in leaves:
        regs = cpuid(leaf, sub)
        if regs is not None:
            table[f"{leaf:#x}:{sub}"] = [f"{r:#010x}" for r in regs]
    return table


def capture(src: Path, dest: Path) -> Capture:
    cap = Capture(src, dest)
    for pattern in FILES:
        for rel in cap.expand(pattern):
            cap.copy(rel)
    cpuinfo = cap.read("proc/cpuinfo")
    if cpuinfo is not None:
        cap.write("proc/cpuinfo", first_cpuinfo_block(cpuinfo))
    environ = cap.read("proc/1/environ")
    if environ is not None and container_environ(environ):
        cap.write("proc/1/environ", container_environ(environ))
    for marker in MARKERS:
        if (src / marker).exists():
            cap.write(marker, "")
    capture_cgroup(cap, cap.read("proc/self/cgroup"))
    cpuid = source_cpuid(src)
    if cpuid is not None:
        table = cpuid_table(cpuid)
        if table:
            rows = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(table.items())]
            cap.write("cpuid.json", "{\n" + ",\n".join(rows) + "\n}\n")
    return cap


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Copy what hugeload's probe reads into a fixture tree (DEST stands for /)."
    )
    parser.add_argument("dest", metavar="DEST", help="directory to create (must not exist or be empty)")
    parser.add_argument("--root", default="/", help="read from this tree instead of the live machine (default /)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the files written and the ones skipped")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        print(f"capture-fixture: {dest} exists and is not an empty directory", file=sys.stderr)
        return 2
    src = Path(args.root)
    if not (src / "sys/kernel/mm/hugepages").is_dir():
        print(
            f"capture-fixture: {src / 'sys/kernel/mm/hugepages'} not found: no huge page support to capture",
            file=sys.stderr,
        )
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    cap = capture(src, dest)
    if args.verbose:
        for rel in cap.written:
            print(f"  {rel}")
        for rel, why in cap.skipped:
            print(f"  skipped {rel} ({why})")
    size = sum((dest / rel).stat().st_size for rel in set(cap.written))
    print(
        f"captured {len(set(cap.written))} files ({size} bytes) into {dest}; {len(cap.skipped)} skipped"
        f"{'' if args.verbose else ' (-v lists them)'}"
    )
    print("review before sharing: it includes the kernel command line, mount points and cgroup names")
    return 0


if __name__ == "__main__":
    sys.exit(main())
