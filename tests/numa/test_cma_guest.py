"""hugetlb_cma in the two-node guest (issue 20, item 4), where the guest's kernel can have it.

The guest boots the newest /boot/vmlinuz-* (scripts/numa-vm.sh); Debian bookworm's 6.1 amd64
kernel, the one installed here, is built without CONFIG_CMA, so this skips saying so.  With a
CMA kernel and `hugetlb_cma=` on the guest's command line, doctor's count of the 1 GB pages the
area can give is checked against what a reservation really gets."""

import json
import subprocess
import sys

import pytest

from hugeload.probe.kconfig import read_kernel_config
from hugeload.probe.kernel import read_boot_params, read_kernel_release
from hugeload.probe.memory import read_meminfo


def test_doctor_counts_the_1g_pages_the_cma_area_gives(tmp_path):
    release = read_kernel_release("/")
    cfg = read_kernel_config("/")
    if cfg is None:
        pytest.skip(f"no config for the guest's kernel {release} (/proc/config.gz, /boot/config-{release})")
    if not cfg.enabled("CONFIG_CMA"):
        pytest.skip(
            f"the guest's kernel {release} is built without CONFIG_CMA ({cfg.source}): hugetlb_cma= cannot be "
            "tested here; install a kernel with CONFIG_CMA=y in /boot for scripts/numa-vm.sh to boot"
        )
    if not read_boot_params("/").hugetlb_cma or not read_meminfo("/").get("CmaTotal"):
        pytest.skip("the guest was booted without a hugetlb_cma= area (scripts/numa-vm.sh's command line)")
    env = {"HUGELOAD_STATE_DIR": str(tmp_path / "state")}
    cli = [sys.executable, "-m", "hugeload.cli"]
    doctor = json.loads(subprocess.run([*cli, "doctor", "--json"], capture_output=True, text=True, env=env).stdout)
    detail = next(c for c in doctor["checks"] if c["name"] == "hugetlb_cma")["detail"]
    left = int(detail.split("can still give ")[1].split(" x 1G")[0])
    assert left >= 1, detail
    out = subprocess.run(
        [*cli, "reserve", "--page-size", "1g", "--count", "1"], env=env, capture_output=True, text=True
    )
    try:
        assert out.returncode == 0, f"a 1 GB page from the CMA area must be there however fragmented: {out.stderr}"
    finally:
        subprocess.run([*cli, "release"], env=env, check=False)
