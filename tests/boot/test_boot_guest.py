"""The seed's GRUB line on a real kernel command line: a QEMU guest (scripts/numa-vm.sh, two
NUMA nodes of 2 GB) boots with `hugepagesz=1G hugepages=32 default_hugepagesz=1G`, the line
`hugeload boot-config --pages-1g 32` writes.  The guest has 4 GB, so the kernel reserves what
fits, not 32: `hugeload doctor` inside must report exactly what /sys says it reserved, and that
it is short of what the command line asks.  Skips, saying why, where the rig cannot boot."""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from hugeload.plan import boot

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def guest_out():
    d = REPO / ".cache" / f"boot-vm-{uuid.uuid4().hex[:8]}"  # under the checkout: the guest's /tmp is its own
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_doctor_reports_the_pools_the_seed_line_reserved_at_boot(guest_out):
    if os.geteuid() != 0:
        pytest.skip("needs root to boot the guest (scripts/numa-vm.sh)")
    line = " ".join(boot.kernel_params(32, None))
    assert line == "hugepagesz=1G hugepages=32 default_hugepagesz=1G"  # the seed's
    env = dict(os.environ, HUGELOAD_VM_APPEND=line, HUGELOAD_NUMA_OUT=str(guest_out), HUGELOAD_NUMA_TIMEOUT="400")
    r = subprocess.run(
        [str(REPO / "scripts/numa-vm.sh"), str(REPO / ".venv/bin/python"), str(REPO / "tests/boot/guest_boot.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
    )
    if r.returncode == 77:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    g = json.loads((guest_out / "boot-guest.json").read_text())
    assert line.split() == [w for w in g["cmdline"] if w.partition("=")[0] in boot.HUGE_PARAMS]
    assert g["hugepagesize"] == "1048576 kB"  # default_hugepagesz=1G took
    got = g["pools"]["hugepages-1048576kB"]["nr_hugepages"]
    assert 0 < got < 32  # what fits in 4 GB: the kernel reserved some, not all
    assert got == sum(n["hugepages-1048576kB"]["nr_hugepages"] for n in g["nodes"].values())
    assert g["doctor_rc"] in (0, 1), g["doctor_stderr"]
    checks = {c["name"]: c for c in g["doctor"]["checks"]}
    assert checks["boot_params"]["detail"] == f"boot command line asks for 32 x 1G, pool has {got}"
    assert checks["boot_params"]["status"] == "warn"
    free = g["pools"]["hugepages-1048576kB"]["free_hugepages"]
    assert checks["pool_1g"]["detail"] == f"{got} x 1G reserved, {free} free" and checks["pool_1g"]["status"] == "pass"
