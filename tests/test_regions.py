"""The region table (csrc/preload/regions.c) against a fake OS layer: no root, no huge pages.

tests/native/test_regions.c links regions.c with a fake hl_os_unmap that records
every call, and checks the one-owner-per-address rules (holes given back belong to
nobody, partial munmaps, full unmap frees, overlap refused, failed munmap kept).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_region_table_with_a_fake_os(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    exe = tmp_path / "test_regions"
    subprocess.run(
        [
            cc,
            "-O1",
            "-g",
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-I",
            str(REPO / "csrc/preload"),
            str(REPO / "tests/native/test_regions.c"),
            str(REPO / "csrc/preload/regions.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count("\nok ") + r.stdout.startswith("ok ") >= 7, r.stdout
