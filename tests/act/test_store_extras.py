"""Persisted models and boot restore, list (container-args: tests/container)."""

import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel]


@pytest.fixture(autouse=True)
def _clean(needs_root, state_dir, hugeload_cli):
    yield
    hugeload_cli("clear", "--force")


def test_persist_then_restore_after_the_store_is_wiped(hugeload_cli, tmp_path, state_dir):
    src = tmp_path / "p.gguf"
    src.write_bytes(os.urandom(3 << 20))
    cfg = tmp_path / "etc"
    assert hugeload_cli("load", src, "--page-size", "2m", "--reserve", "--persist", "--config-dir", cfg).returncode == 0
    desired = json.loads((cfg / "models.json").read_text())["models"]
    assert [(m["name"], m["source"], m["page_size_kb"]) for m in desired] == [("p", str(src), 2048)]
    # A reboot empties /run: pages, mounts and the store are gone, /etc remains.
    assert hugeload_cli("clear", "--force").returncode == 0
    (cfg / "models.json").write_text(json.dumps({"models": desired}))
    out = hugeload_cli("restore", "--config-dir", cfg, "--json")
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)["restored"]
    assert [r["name"] for r in restored] == ["p"]
    loaded = json.loads(hugeload_cli("loaded", "--json").stdout)["models"]
    assert [(m["name"], m["state"]) for m in loaded] == [("p", "ready")]
    assert hugeload_cli("unload", "p", "--config-dir", cfg).returncode == 0
    assert json.loads((cfg / "models.json").read_text())["models"] == []


def test_clear_keep_persisted_gives_pages_back_and_keeps_models_json(hugeload_cli, tmp_path, state_dir):
    # The boot unit's stop (ExecStop=... clear --force --keep-persisted): pages, mounts and
    # copies go, the list of models to restore at the next boot stays as it was.
    pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    before = Path(pool).read_text()
    cfg = tmp_path / "etc"
    for name, persist in (("kept", ["--persist"]), ("other", [])):
        src = tmp_path / f"{name}.gguf"
        src.write_bytes(os.urandom(3 << 20))
        out = hugeload_cli("stage", src, "--page-size", "2m", "--reserve", *persist, "--config-dir", cfg)
        assert out.returncode == 0, out.stderr
    listed = (cfg / "models.json").read_text()
    assert [m["name"] for m in json.loads(listed)["models"]] == ["kept"]
    out = hugeload_cli("clear", "--force", "--keep-persisted", "--config-dir", cfg, "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["unloaded"]) == ["kept", "other"]
    assert (cfg / "models.json").read_text() == listed
    assert json.loads(hugeload_cli("staged", "--json").stdout)["models"] == []
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert Path(pool).read_text() == before and not any(
        line.split()[2] == "hugetlbfs" and Path(line.split()[1]).is_relative_to(state_dir) for line in mounts
    )
    out = hugeload_cli("restore", "--config-dir", cfg, "--json")
    assert out.returncode == 0 and [r["name"] for r in json.loads(out.stdout)["restored"]] == ["kept"], out.stderr


def test_systemd_unit(hugeload_cli, tmp_path):
    out = hugeload_cli("boot-config", "--systemd", "--apply", "--target-root", tmp_path)
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "etc/systemd/system/hugeload-restore.service").read_text()
    assert "After=local-fs.target" in unit and "restore" in unit.split("ExecStart=")[1].splitlines()[0]


def test_list_models_with_plan(hugeload_cli, tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"\0" * (3 << 20))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "notes.txt").write_text("x")
    data = json.loads(hugeload_cli("list", tmp_path, "--json").stdout)["models"]
    assert [(os.path.basename(m["path"]), m["recommended_page_size_kb"], m["pages"]) for m in data] == [
        ("a.gguf", 2048, 2),
        ("b.safetensors", 2048, 1),
    ]
