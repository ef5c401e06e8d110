"""The CLI over fixture trees: in process through hugeload.cli.main, and as the installed `hugeload` script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hugeload.cli import main

GiB = 1 << 30
G, M, K = 1048576, 2048, 4
TREES = ["zen-vm", "numa2-1g", "no1g", "container-v2"]


def run_json(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert err == ""
    return rc, json.loads(out)


def assert_one_line_error(err: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hugeload: error:")
    assert "Traceback" not in err


# --- status ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TREES)
def test_status_json_contract(tree, capsys, name):
    rc, data = run_json(capsys, ["--root", tree(name), "status", "--json"])
    assert rc == 0
    assert data["pools"]
    for p in data["pools"]:
        assert {"page_size_kb", "node", "total", "free", "reserved", "surplus"} <= set(p)
        assert isinstance(p["page_size_kb"], int) and isinstance(p["total"], int)
        assert p["node"] is None or isinstance(p["node"], int)
    assert any(p["node"] is None for p in data["pools"])
    for m in data["mounts"]:
        assert isinstance(m["path"], str) and isinstance(m["page_size_kb"], int)
    assert set(data["thp"]) == {"enabled", "defrag", "shmem_enabled"}


def test_status_json_values(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("zen-vm"), "status", "--json"])
    system_1g = next(p for p in data["pools"] if p["page_size_kb"] == G and p["node"] is None)
    assert (system_1g["total"], system_1g["free"], system_1g["reserved"], system_1g["surplus"]) == (4, 2, 1, 0)
    node_1g = next(p for p in data["pools"] if p["page_size_kb"] == G and p["node"] == 0)
    assert node_1g["reserved"] is None
    assert [(m["path"], m["page_size_kb"], m["size_bytes"]) for m in data["mounts"]] == [
        ("/mnt/hugepages-1gb", G, 4 * GiB),
        ("/mnt/hugepages-2mb", M, None),
    ]
    assert [p["pid"] for p in data["processes"]] == [4242, 4300]  # hugetlb user, THP user
    assert data["processes"][0]["hugetlb_kb"] == 2097152


def test_status_numa_nodes(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("numa2-1g"), "status", "--json"])
    assert sorted((p["node"] is None, p["node"] or 0) for p in data["pools"] if p["page_size_kb"] == G) == [
        (False, 0),
        (False, 1),
        (True, 0),
    ]


def test_status_pid(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("zen-vm"), "status", "--pid", "4242", "--json"])
    (proc,) = data["processes"]
    assert proc["comm"] == "llama-server"
    assert [m["kernel_page_kb"] for m in proc["mappings"]] == [G, K, K]
    assert proc["mappings"][0]["path"] == "/mnt/hugepages-1gb/model.gguf"


def test_status_unknown_pid(tree, capsys):
    assert main(["--root", tree("zen-vm"), "status", "--pid", "99999"]) == 2
    out, err = capsys.readouterr()
    assert_one_line_error(err)
    assert "99999" in err and out == ""


@pytest.mark.parametrize("name", TREES)
def test_status_table(tree, capsys, name):
    assert main(["--root", tree(name), "status"]) == 0
    out = capsys.readouterr().out
    assert "Pools" in out and "THP: enabled=" in out


def test_status_table_shows_process_mappings(tree, capsys):
    main(["--root", tree("zen-vm"), "status"])
    out = capsys.readouterr().out
    assert "llama-server" in out and "2.0 GiB" in out


def test_status_table_keeps_bracketed_mapping_names(tree, capsys):
    main(["--root", tree("zen-vm"), "status", "--pid", "4242"])
    assert "[anon]" in capsys.readouterr().out


# --- plan ------------------------------------------------------------------------------


def options_by_size(data):
    return {o["page_size_kb"]: o for o in data["options"]}


@pytest.mark.parametrize("name,recommended", [("zen-vm", G), ("numa2-1g", G), ("no1g", M), ("container-v2", G)])
def test_plan_json_contract(tree, capsys, name, recommended):
    rc, data = run_json(capsys, ["--root", tree(name), "plan", "--size", "30G", "--json"])
    assert rc == 0
    for o in data["options"]:
        assert {"page_size_kb", "pages", "bytes", "waste_bytes", "tlb_entries"} <= set(o)
    assert data["recommended_page_size_kb"] == recommended
    assert isinstance(data["reason"], str) and data["reason"]
    o = options_by_size(data)
    assert o[M]["pages"] == 15360
    if recommended == G:
        assert o[G]["pages"] == 30


def test_plan_cpu_tlb_json_keys(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("numa2-1g"), "plan", "--size", "30G", "--json"])
    assert options_by_size(data)[G]["cpu_tlb_entries"] == {"1": 8, "2": 1024}
    assert data["tlb_source"] == "cpuid"


def sparse(path: Path, size: int) -> str:
    """A sparse file of `size` bytes; a .safetensors one has a valid header (plan checks it)."""
    with open(path, "wb") as f:
        if path.suffix == ".safetensors":
            n = size - 8 - 128
            f.write(
                (128).to_bytes(8, "little")
                + json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode().ljust(128)
            )
        f.truncate(size)
    return str(path)


def test_plan_files_waste(tree, capsys, tmp_path):
    model = sparse(tmp_path / "model.gguf", 3 * GiB // 2)
    _, data = run_json(capsys, ["--root", tree("zen-vm"), "plan", model, "--json"])
    o = options_by_size(data)
    assert (o[G]["pages"], o[G]["waste_bytes"]) == (2, GiB // 2)
    assert (o[M]["pages"], o[M]["waste_bytes"]) == (768, 0)
    assert data["sizes"] == [3 * GiB // 2]


@pytest.mark.parametrize("name, advice", [("zen-vm", "heap"), ("container-v2", "heap"), ("intel-snb", "stage")])
def test_plan_says_what_the_engine_reads_on_this_cpu(tree, capsys, tmp_path, name, advice):
    # A Q4_K model is repacked into a heap copy on AVX2 (staging it would pin pages read once,
    # at load); without AVX2 the engine reads the mapping, and staging is what helps.
    from hugeload.modelgen import ModelSpec, make_model

    model = tmp_path / "q4k.gguf"
    make_model(model, ModelSpec(16 << 20, "Q4_K"))
    _, data = run_json(capsys, ["--root", tree(name), "plan", str(model), "--json"])
    reads = data["reads"]
    assert reads["advice"] == advice and reads["mapping"] + reads["tables"] + reads["heap"] > 15 << 20
    assert (reads["heap"] > reads["mapping"]) == (advice == "heap")
    assert "reads" not in run_json(capsys, ["--root", tree(name), "plan", "--size", "1G", "--json"])[1]


def test_plan_files_round_separately(tree, capsys, tmp_path):
    a = sparse(tmp_path / "model-00001-of-00002.safetensors", 3 * GiB // 2)
    b = sparse(tmp_path / "model-00002-of-00002.safetensors", 3 * GiB // 2)
    _, data = run_json(capsys, ["--root", tree("zen-vm"), "plan", a, b, "--json"])
    assert data["total_bytes"] == 3 * GiB
    assert options_by_size(data)[G]["pages"] == 4


@pytest.mark.parametrize(
    "args,recommended,reason",
    [
        (["--page-size", "2m"], M, "2M requested"),
        (["--page-size", "4k"], K, "4K requested"),
        (["--page-size", "1G"], G, "1G requested"),
        (["--threshold-1g", "64G"], M, "model is under 64 GiB; 2M pages are obtainable"),
    ],
)
def test_plan_page_size_and_threshold(tree, capsys, args, recommended, reason):
    _, data = run_json(capsys, ["--root", tree("zen-vm"), "plan", "--size", "30G", *args, "--json"])
    assert (data["recommended_page_size_kb"], data["reason"]) == (recommended, reason)


def test_plan_forced_1g_on_no1g(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("no1g"), "plan", "--size", "30G", "--page-size", "1g", "--json"])
    assert data["recommended_page_size_kb"] == K
    assert "offers no such pages" in data["reason"]


def test_plan_table(tree, capsys):
    assert main(["--root", tree("numa2-1g"), "plan", "--size", "30G"]) == 0
    out = capsys.readouterr().out
    assert "recommended: 1G" in out and "15360" in out


# --- doctor ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,rc", [("zen-vm", 0), ("numa2-1g", 0), ("no1g", 1), ("container-v2", 1)])
def test_doctor_json_contract(tree, capsys, name, rc):
    got_rc, data = run_json(capsys, ["--root", tree(name), "doctor", "--json"])
    assert got_rc == rc
    assert data["usable_1g"] is (rc == 0)
    assert data["tried"] is None
    for c in data["checks"]:
        assert {"name", "status", "detail", "fix"} <= set(c)
        assert c["status"] in ("pass", "warn", "fail")


def test_doctor_no1g_cpu_fails(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("no1g"), "doctor", "--json"])
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["cpu_1g"]["status"] == "fail"


def test_doctor_container_cgroup_warns(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("container-v2"), "doctor", "--json"])
    c = {c["name"]: c for c in data["checks"]}["cgroup"]
    assert c["status"] == "warn" and "2 x 1G" in c["detail"]


def test_doctor_numa2_boot_params_pass(tree, capsys):
    _, data = run_json(capsys, ["--root", tree("numa2-1g"), "doctor", "--json"])
    assert {c["name"]: c["status"] for c in data["checks"]}["boot_params"] == "pass"


@pytest.mark.parametrize("name,verdict", [("zen-vm", "usable"), ("no1g", "not usable")])
def test_doctor_table(tree, capsys, name, verdict):
    main(["--root", tree(name), "doctor"])
    assert f"1G pages: {verdict}" in capsys.readouterr().out


# --- bad input: exit 2, one line on stderr ---------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "/nonexistent/model.gguf"],
        ["plan"],
        ["plan", "--size", "30G", "extra-file"],
    ],
)
def test_bad_input_exits_2(tree, capsys, argv):
    assert main(["--root", tree("zen-vm"), *argv]) == 2
    _, err = capsys.readouterr()
    assert_one_line_error(err)


def test_argparse_errors_exit_2(tree, capsys):
    # page sizes and sizes are checked at parse time (an argparse type=), so they exit here too
    for argv in (
        ["status", "--bogus"],
        ["nosuchcommand"],
        ["status", "--pid", "abc"],
        ["plan", "--size", "30G", "--page-size", "16m"],
        ["plan", "--size", "thirty"],
        ["plan", "--size", "30G", "--threshold-1g", "big"],
        ["run", "--alloc-threshold", "lots", "--", "true"],
    ):
        with pytest.raises(SystemExit) as e:
            main(["--root", tree("zen-vm"), *argv])
        assert e.value.code == 2
        assert_one_line_error(capsys.readouterr().err)


def test_directory_is_not_a_model(tree, capsys, tmp_path):
    assert main(["--root", tree("zen-vm"), "plan", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv", [["status"], ["status", "--json"], ["doctor"], ["doctor", "--json"], ["plan", "--size", "30G"]]
)
def test_root_without_hugepages_exits_2(capsys, tmp_path, argv):
    (tmp_path / "proc").mkdir()
    assert main(["--root", str(tmp_path), *argv]) == 2
    out, err = capsys.readouterr()
    assert_one_line_error(err)
    assert "sys/kernel/mm/hugepages" in err and out == ""


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: hugeload" in capsys.readouterr().out


# --- the installed script --------------------------------------------------------------


def hugeload_script():
    exe = Path(sys.executable).parent / "hugeload"
    found = str(exe) if exe.exists() else shutil.which("hugeload")
    if not found:
        pytest.skip("the hugeload script is not installed (pip install -e .)")
    return found


def run_script(*args):
    env = {k: v for k, v in os.environ.items() if k != "HUGELOAD_DEBUG"}
    return subprocess.run([hugeload_script(), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("name", TREES)
def test_script_status_json(tree, name):
    r = run_script("--root", tree(name), "status", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    data = json.loads(r.stdout)
    assert {"pools", "mounts"} <= set(data)
    for p in data["pools"]:
        assert {"page_size_kb", "node", "total", "free", "reserved", "surplus"} <= set(p)
    for m in data["mounts"]:
        assert {"path", "page_size_kb"} <= set(m)


def test_script_plan_and_doctor(tree):
    r = run_script("--root", tree("numa2-1g"), "plan", "--size", "30G", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["recommended_page_size_kb"] == G
    r = run_script("--root", tree("no1g"), "doctor", "--json")
    assert r.returncode == 1
    assert {c["name"]: c["status"] for c in json.loads(r.stdout)["checks"]}["cpu_1g"] == "fail"


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--size", "30G", "--page-size", "16m"],
        ["plan", "--size", "30Q"],
        ["plan", "/nonexistent/model.gguf"],
        ["status", "--bogus"],
    ],
)
def test_script_bad_input(tree, args):
    r = run_script("--root", tree("zen-vm"), *args)
    assert r.returncode == 2
    assert_one_line_error(r.stderr)
    assert r.stdout == ""


def test_script_root_without_hugepages(tmp_path):
    r = run_script("--root", str(tmp_path), "status", "--json")
    assert r.returncode == 2
    assert_one_line_error(r.stderr)
