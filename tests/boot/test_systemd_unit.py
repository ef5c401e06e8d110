"""hugeload-restore.service under a real systemd, PID 1 of a podman container.

The image (scripts/systemd-image.sh) holds systemd, the system's python3 and hugeload
installed root-owned in /usr/local, with the unit `hugeload boot-config --systemd --apply`
writes, enabled.  The container is privileged: the pools it fills are this host's.  A model
is persisted (models.json, bind-mounted at /etc/hugeload) and its source bind-mounted
read-only.  Asserted:
  - at start-up the unit has run and succeeded, with its hardening in force, and the model
    is staged, whole (same SHA-256 as its source), in 2 MB pages: the host's 2M pool gave it
    exactly the model's pages (free ones first, the rest reserved);
  - `systemctl stop` gives every page back (the pool is as before), unmounts the store and
    keeps the model listed; `systemctl start` stages it again;
  - hugeload-exporter.service, hardened (ProtectSystem=strict, ...), serves the model's
    metrics on the container's loopback;
  - shutting the container down (systemd's own stop of the unit) gives the pages back too.
Pages: 3 x 2 MB.  Skips, saying why, where podman or systemd cannot run."""

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from hugeload.act import persist

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
P2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
PODMAN = shutil.which("podman")
RUN_OPTS = ["--network", "none", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
MODEL_INSIDE = "/var/lib/hugeload/models/m.bin"


def pool() -> tuple[int, int]:
    """(pages in the 2M pool, pages free and not promised to a mapping)."""
    n, free, resv = (int((P2M / f).read_text()) for f in ("nr_hugepages", "free_hugepages", "resv_hugepages"))
    return n, free - resv


def staged_pool(before: tuple[int, int], pages: int) -> tuple[int, int]:
    """The pool once `pages` are staged: hugeload takes free pages first and reserves only
    what is missing (read back from the kernel)."""
    grown = max(0, pages - before[1])
    return before[0] + grown, before[1] + grown - pages


def podman(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([PODMAN, "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"podman {' '.join(args[:4])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


@pytest.fixture(scope="module")
def image():
    if os.geteuid() != 0:
        pytest.skip("needs root: the container is privileged and fills the host's pools")
    if PODMAN is None:
        pytest.skip("podman is not installed (scripts/test.sh installs it: apt-get install podman runc)")
    if not P2M.is_dir():
        pytest.skip("no 2 MB huge pages in this kernel")
    tag = f"localhost/hugeload-systemd-test-{uuid.uuid4().hex[:8]}:local"
    r = subprocess.run(
        [str(REPO / "scripts/systemd-image.sh"), "--tag", tag], capture_output=True, text=True, timeout=300
    )
    if r.returncode:
        pytest.skip(f"cannot build the systemd image here: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    try:
        yield tag
    finally:
        subprocess.run([str(REPO / "scripts/systemd-image.sh"), "--tag", tag, "--remove"], timeout=120)


def wait_booted(name: str, timeout: float = 90) -> str:
    """systemd's own answer once start-up is over: running, or degraded (units the image
    cannot run in a container, such as dev-hugepages.mount, failed)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = podman("exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return state
        status = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if status not in ("running", "created", "configured"):
            pytest.skip(
                f"systemd did not boot in podman here ({status}): {podman('logs', name, check=False).stderr[-300:]}"
            )
        time.sleep(0.5)
    raise AssertionError(f"systemd not up after {timeout} s: {state}")


def unit(name: str, *props: str) -> dict:
    out = podman("exec", name, "systemctl", "show", "hugeload-restore.service", *(f"-p{p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def staged(name: str) -> list[dict]:
    r = podman("exec", name, "python3", "-I", "-m", "hugeload", "staged", "--json")
    return json.loads(r.stdout)["models"]


SCRAPE = """
import time, urllib.request
for _ in range(100):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode())
        break
    except OSError:
        time.sleep(0.2)
"""


def hugetlbfs_mounts(name: str) -> list[str]:
    code = "print('\\n'.join(l.split()[1] for l in open('/proc/mounts') if l.split()[2] == 'hugetlbfs'))"
    return podman("exec", name, "python3", "-c", code).stdout.split()


def test_the_unit_restores_a_persisted_model_at_boot_and_gives_it_back(image, tmp_path):
    source = tmp_path / "models" / "m.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(5_000_000))  # 3 x 2 MB pages
    etc = tmp_path / "etc"
    persist.add("m", MODEL_INSIDE, 2048, config_dir=etc)
    name = f"hugeload-boot-{uuid.uuid4().hex[:8]}"
    before = pool()
    try:
        podman(
            "run", "-d", "--name", name, "--privileged", "--systemd=always", *RUN_OPTS,
            "-v", f"{source.parent}:{os.path.dirname(MODEL_INSIDE)}:ro",
            "-v", f"{etc}:/etc/hugeload",
            image,
        )  # fmt: skip
        wait_booted(name)
        u = unit(
            name, "ActiveState", "Result", "ExecMainStatus", "ExecStart", "NoNewPrivileges", "CapabilityBoundingSet"
        )
        assert (u["ActiveState"], u["Result"], u["ExecMainStatus"]) == ("active", "success", "0"), u
        assert "path=/usr/bin/python3 ; argv[]=/usr/bin/python3 -I -m hugeload restore" in u["ExecStart"], u
        assert u["NoNewPrivileges"] == "yes" and "cap_sys_admin" in u["CapabilityBoundingSet"]
        assert "cap_sys_module" not in u["CapabilityBoundingSet"]
        [m] = staged(name)
        assert (m["name"], m["state"], m["page_size_kb"], m["pages"]) == ("m", "ready", 2048, 3), m
        digest = podman(
            "exec", name, "python3", "-c",
            "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read(5_000_000)).hexdigest())",
            m["path"],
        ).stdout.strip()  # fmt: skip
        assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
        assert pool() == staged_pool(before, 3)  # the model's pages and nothing more

        podman("exec", name, "systemctl", "stop", "hugeload-restore.service")
        assert pool() == before
        assert staged(name) == [] and hugetlbfs_mounts(name) == []
        assert [x["name"] for x in persist.load(etc)] == ["m"]  # still restored at the next boot

        podman("exec", name, "systemctl", "start", "hugeload-restore.service")
        assert [x["state"] for x in staged(name)] == ["ready"] and pool() == staged_pool(before, 3)

        podman("exec", name, "systemctl", "start", "hugeload-exporter.service")
        metrics = podman("exec", name, "python3", "-c", SCRAPE).stdout
        assert 'hugeload_model_ready{model="m"} 1.0' in metrics.splitlines(), metrics[-2000:]
        assert unit(name, "ActiveState")["ActiveState"] == "active"
        podman("exec", name, "systemctl", "stop", "hugeload-exporter.service")
        podman("stop", "-t", "60", name, timeout=120)  # systemd's shutdown stops the unit
        assert pool() == before
    finally:
        podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
    assert not podman("ps", "-a", "--filter", f"name={name}", "-q").stdout.strip()
