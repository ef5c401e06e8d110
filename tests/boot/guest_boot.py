"""Run inside the guest that tests/boot/test_boot_guest.py boots: what the kernel reserved
at boot (from /sys and /proc), and what `hugeload doctor` says about it, as one JSON file in
$HUGELOAD_NUMA_OUT for the host to compare."""

import json
import os
import subprocess
import sys
from pathlib import Path


def counters(d: Path) -> dict[str, int]:
    return {f.name: int(f.read_text()) for f in sorted(d.iterdir()) if f.name.endswith("hugepages")}


def main() -> int:
    pools = {d.name: counters(d) for d in sorted(Path("/sys/kernel/mm/hugepages").iterdir())}
    nodes = {
        d.name: {p.name: counters(p) for p in sorted((d / "hugepages").iterdir())}
        for d in sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))
    }
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    doctor = subprocess.run([sys.executable, "-m", "hugeload", "doctor", "--json"], capture_output=True, text=True)
    out = {
        "cmdline": Path("/proc/cmdline").read_text().split(),
        "pools": pools,
        "nodes": nodes,
        "hugepagesize": meminfo["Hugepagesize"].strip(),
        "doctor_rc": doctor.returncode,
        "doctor": json.loads(doctor.stdout) if doctor.stdout.strip() else None,
        "doctor_stderr": doctor.stderr[-2000:],
    }
    (Path(os.environ["HUGELOAD_NUMA_OUT"]) / "boot-guest.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
