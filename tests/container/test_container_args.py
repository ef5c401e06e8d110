"""`hugeload container-args`: docker/podman argv, a compose service, Kubernetes manifests.

The manifests are checked with kubernetes-validate (strict: unknown fields fail) against
the newest Kubernetes version the installed package ships schemas for; the compose file
with `docker-compose config` where it is installed.  The hugepages request must cover only
what the pod allocates itself (its heap copy), never the staged pages it maps."""

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hugeload.plan import container as plan

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the test extra: pip install -e '.[test]'"
)
yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate")

MODEL = plan.ContainerModel("Tiny_Q4.0", 1048576, 1, "/run/hugeload/store/mnt-1g", ("tiny.gguf",))
OPTS = plan.Options(
    host_lib="/usr/lib/hugeload/libhugeload.so",
    env=(("HUGELOAD_PAGE_SIZE", "auto"), ("HUGELOAD_STATE_DIR", "/tmp/x"), ("PATH", "/bin")),
)


def validate(doc: dict) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)


def resources(doc: dict) -> dict:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    return spec["containers"][0]["resources"]


@pytest.mark.parametrize("kind", list(plan.Kind))
@pytest.mark.parametrize("heap", [0, 300 << 20, (1 << 30) + (64 << 20), 3 << 30])
def test_k8s_manifests_validate(kind, heap):
    opts = plan.Options(**{**OPTS.__dict__, "kind": kind, "heap_bytes": heap})
    docs = plan.k8s_manifests(MODEL, opts)
    # The YAML text is what users apply: parse it back and validate that, not the dicts.
    parsed = list(yaml.safe_load_all(plan.to_yaml(docs)))
    assert parsed == docs
    for d in parsed:
        validate(d)
    assert [d["kind"] for d in parsed] == ["Pod" if kind is plan.Kind.POD else "Deployment", "DaemonSet"]
    res = resources(parsed[0])
    assert res["requests"] == res["limits"]
    huge = {k: v for k, v in res["requests"].items() if k.startswith("hugepages-")}
    # The staged model (1 x 1G page) is never requested; the heap copy is, in its own page size.
    assert (
        huge
        == {
            0: {},
            300 << 20: {"hugepages-2Mi": "300Mi"},
            (1 << 30) + (64 << 20): {"hugepages-2Mi": "1088Mi"},
            3 << 30: {"hugepages-1Gi": "3Gi"},
        }[heap]
    )


def test_k8s_engine_environment_and_mounts():
    pod = plan.k8s_workload(MODEL, plan.Options(**{**OPTS.__dict__, "kind": plan.Kind.POD}))
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    # Host-only settings stay out: no store index or report path inside the container.
    assert env == {"HUGELOAD_PAGE_SIZE": "auto", "LD_PRELOAD": plan.LIB_INSIDE}
    assert c["args"][:2] == ["-m", "/models/hugeload/Tiny_Q4.0/tiny.gguf"]
    assert all(m["readOnly"] for m in c["volumeMounts"])
    paths = {v["name"]: v["hostPath"] for v in pod["spec"]["volumes"]}
    # The model's own staged file, not the store's mount: the pod sees no other model.
    assert paths == {
        "hugeload-model-0": {"path": f"{MODEL.mount_dir}/Tiny_Q4.0/tiny.gguf", "type": "File"},
        "hugeload-lib": {"path": OPTS.host_lib, "type": "File"},
    }
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]} == {
        "hugeload-model-0": "/models/hugeload/Tiny_Q4.0/tiny.gguf",
        "hugeload-lib": plan.LIB_INSIDE,
    }
    assert pod["metadata"]["name"] == "llama-tiny-q4-0"


def test_k8s_agent_daemonset():
    ds = plan.k8s_agent(OPTS)
    validate(ds)
    spec = ds["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["command"] == ["hugeload", "restore"]
    assert spec["containers"][0]["command"][:2] == ["hugeload", "exporter"]
    assert spec["hostPID"] is True
    # It names every process with huge pages: served on the node's loopback only.
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    agent = spec["containers"][0]
    assert agent["command"][agent["command"].index("--listen") + 1] == "127.0.0.1:9464" and "ports" not in agent
    hosts = {v["hostPath"]["path"] for v in spec["volumes"]}
    assert {"/run/hugeload", "/etc/hugeload", "/sys", OPTS.models_dir} <= hosts
    state = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/run/hugeload")
    assert state["mountPropagation"] == "Bidirectional"  # the agent's hugetlbfs mounts reach the pods


def test_run_args_and_compose():
    argv = plan.run_args(MODEL, OPTS)
    assert argv[:3] == ["run", "--rm", "--read-only"]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert binds == [
        f"{MODEL.mount_dir}/Tiny_Q4.0/tiny.gguf:{plan.MODELS_INSIDE}/Tiny_Q4.0/tiny.gguf:ro",
        f"{OPTS.host_lib}:{plan.LIB_INSIDE}:ro",
    ]
    assert f"LD_PRELOAD={plan.LIB_INSIDE}" in argv and "HUGELOAD_STATE_DIR=/tmp/x" not in " ".join(argv)
    i = argv.index(OPTS.image)
    assert argv[i + 1 : i + 3] == ["llama-server", "-m"]
    own = plan.run_args(MODEL, plan.Options(**{**OPTS.__dict__, "args": ("--host", "/s/x.sock")}))
    assert "-p" not in own and own[-2:] == ["--host", "/s/x.sock"]
    svc = yaml.safe_load(plan.to_yaml([plan.compose(MODEL, OPTS)]))
    assert list(svc["services"]) == ["llama-tiny-q4-0"]
    assert [v["source"] for v in svc["services"]["llama-tiny-q4-0"]["volumes"]] == [
        f"{MODEL.mount_dir}/Tiny_Q4.0/tiny.gguf",
        OPTS.host_lib,
    ]


def test_a_split_model_binds_each_of_its_files():
    split = plan.ContainerModel("big", 2048, 4, "/s/mnt-2m", ("big-00001-of-00002.gguf", "big-00002-of-00002.gguf"))
    argv = plan.run_args(split, OPTS)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-v"][:2] == [
        f"/s/mnt-2m/big/{f}:{plan.MODELS_INSIDE}/big/{f}:ro" for f in split.files
    ]
    pod = plan.k8s_workload(split, plan.Options(**{**OPTS.__dict__, "kind": plan.Kind.POD}))
    validate(pod)
    assert [v["hostPath"]["path"] for v in pod["spec"]["volumes"]][:2] == [f"/s/mnt-2m/big/{f}" for f in split.files]


def test_yaml_quotes_what_yaml_would_retype():
    text = plan.to_yaml([{"a": "yes", "b": "8080", "c": "x: y", "d": True, "e": 3, "f": [], "g": {}, "h": "0.0.0.0:1"}])
    assert yaml.safe_load(text) == {
        "a": "yes",
        "b": "8080",
        "c": "x: y",
        "d": True,
        "e": 3,
        "f": [],
        "g": {},
        "h": "0.0.0.0:1",
    }


# ---------------------------------------------------------------- the command, on a staged model


@pytest.fixture
def staged(needs_root, state_dir, hugeload_cli, tmp_path):
    src = tmp_path / "c.gguf"
    src.write_bytes(os.urandom(1 << 20))
    out = hugeload_cli("load", src, "--page-size", "2m", "--reserve", "--json")
    assert out.returncode == 0, out.stderr
    yield json.loads(out.stdout)
    assert hugeload_cli("clear", "--force").returncode == 0


@pytest.mark.kernel
def test_cli_outputs(staged, hugeload_cli, tmp_path):
    mnt = os.path.dirname(os.path.dirname(staged["path"]))
    argv = shlex.split(hugeload_cli("container-args", "--engine", "podman", "c", "--", "-c", "256").stdout)
    assert argv[:2] == ["podman", "run"] and f"{mnt}/c/c.gguf:/models/hugeload/c/c.gguf:ro" in argv
    assert argv[-2:] == ["-c", "256"] and not [a for a in argv if a.startswith(f"{mnt}:")]
    lib = next(a for a in argv if a.endswith(":/opt/hugeload/libhugeload.so:ro")).split(":")[0]
    assert os.path.samefile(lib, __import__("hugeload.native", fromlist=["x"]).library_path())
    assert json.loads(hugeload_cli("container-args", "c", "--engine", "docker", "--json").stdout)[0] == "docker"
    for kind in ("deployment", "pod"):
        out = hugeload_cli("container-args", "c", "--engine", "k8s", "--kind", kind)
        assert out.returncode == 0, out.stderr
        docs = list(yaml.safe_load_all(out.stdout))
        for d in docs:
            validate(d)
        # Random bytes are no GGUF: no repack copy, so no hugepages request at all.
        assert not any(k.startswith("hugepages-") for k in resources(docs[0])["requests"])
        assert "charged to the stager" in out.stderr
    listed = json.loads(hugeload_cli("container-args", "c", "--engine", "k8s", "--json", "--heap-copy", "300M").stdout)
    assert listed["kind"] == "List" and resources(listed["items"][0])["limits"]["hugepages-2Mi"] == "300Mi"
    compose = tmp_path / "compose.yaml"
    compose.write_text(hugeload_cli("container-args", "c", "--engine", "compose").stdout)
    if shutil.which("docker-compose"):
        check = subprocess.run(["docker-compose", "-f", str(compose), "config", "-q"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


@pytest.mark.kernel
def test_cli_notes_a_missing_runtime_or_image(staged, hugeload_cli, tmp_path):
    out = hugeload_cli("container-args", "--engine", "docker", "c", env={"PATH": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.startswith("docker run")
    assert out.stderr.strip() == "hugeload: note: docker is not installed here (apt-get install docker.io)"
    if shutil.which("podman"):
        out = hugeload_cli("container-args", "--engine", "podman", "--image", "localhost/hugeload-none:x", "c")
        assert out.returncode == 0 and "image localhost/hugeload-none:x is not built here" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.kernel
@pytest.mark.parametrize(
    "argv,needle",
    [
        (["nope"], "no staged model named"),
        (["c", "--engine", "k8s", "--heap-copy", "lots"], "lots"),
        (["c", "--port", "0"], "not a TCP port"),
    ],
)
def test_cli_bad_input(staged, hugeload_cli, argv, needle):
    out = hugeload_cli("container-args", *argv)
    assert out.returncode != 0 and needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_the_documented_network_policy_validates():
    """docs/containers.md's NetworkPolicy for a cluster Prometheus is a valid object that
    selects the agent's pods."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "containers.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = yaml.safe_load(block)
    validate(policy)
    agent_labels = plan.k8s_agent(OPTS)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= agent_labels.items()
