"""A container started with `hugeload container-args --engine podman` sees its own model's
staged file, read-only, and no other model staged on the node.

Two models are staged (2 MB pages); the container runs what container-args prints for the
first, with a static busybox (imported from this host with `podman import`) as the engine,
which lists /models and hashes the file it is given with -m.  Pages: 2 x 2 MB."""

import hashlib
import os
import shlex
import shutil
import subprocess
import uuid

import pytest

pytestmark = [pytest.mark.kernel]
PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")
RUN_OPTS = ["--network", "none", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
# $1 is -m, $2 the model: list what the container sees, hash the model's bytes (the staged
# file is whole huge pages long, the source's size first), try to write it.
SCRIPT = (
    '/bin/busybox find /models -type f; /bin/busybox head -c 1048576 "$2" | /bin/busybox sha256sum; '
    '(echo x >> "$2") 2>/dev/null && echo WRITABLE || echo READ-ONLY'
)


def podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    r = subprocess.run([PODMAN, "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory):
    if PODMAN is None:
        pytest.skip("podman is not installed (scripts/test.sh installs it: apt-get install podman runc)")
    if (
        BUSYBOX is None
        or b"statically linked" not in subprocess.run(["file", "-L", BUSYBOX], capture_output=True).stdout
    ):
        pytest.skip("no static busybox on this host (apt-get install busybox-static)")
    root = tmp_path_factory.mktemp("rootfs")
    (root / "bin").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for d in ("models", "opt/hugeload", "tmp", "proc", "sys", "dev", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    tag = f"localhost/hugeload-busybox-{uuid.uuid4().hex[:8]}:local"
    tar = subprocess.Popen(["tar", "-C", str(root), "-cf", "-", "."], stdout=subprocess.PIPE)
    r = subprocess.run([PODMAN, "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True, timeout=120)
    tar.wait()
    if r.returncode:
        pytest.skip(f"podman import failed here: {r.stderr.strip()[-200:]}")
    yield tag
    podman("image", "rm", "-f", tag, check=False)


def test_a_container_sees_only_its_own_model_read_only(busybox_image, needs_root, state_dir, hugeload_cli, tmp_path):
    sources = {}
    for name in ("alpha", "beta"):
        src = tmp_path / f"{name}.bin"
        src.write_bytes(os.urandom(1 << 20))
        sources[name] = src
        r = hugeload_cli("stage", src, "--name", name, "--page-size", "2m", "--reserve")
        assert r.returncode == 0, r.stderr
    ctr = f"hugeload-binds-{uuid.uuid4().hex[:8]}"
    try:
        out = hugeload_cli(
            "container-args", "--engine", "podman", "--image", busybox_image,
            "--command", f"/bin/busybox sh -c {shlex.quote(SCRIPT)} sh", "alpha",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        argv = shlex.split(out.stdout)
        assert argv[:2] == ["podman", "run"]
        r = podman("run", "--name", ctr, *RUN_OPTS, *argv[2:], check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = r.stdout.split("\n")
        inside = "/models/hugeload/alpha/alpha.bin"
        assert lines[0] == inside and "beta" not in r.stdout  # its own model, nothing else
        assert lines[1].split() == [hashlib.sha256(sources["alpha"].read_bytes()).hexdigest(), "-"]
        assert lines[2] == "READ-ONLY"
    finally:
        podman("rm", "-f", "-t", "0", ctr, check=False)
        hugeload_cli("clear", "--force")
