"""Container and Kubernetes arguments for an engine on a staged model.  Pure: no I/O.

How huge pages are charged decides what a pod must request:
  - The staged model's pages were faulted in by the stager (`hugeload load` or the node
    agent's `hugeload restore`), so the hugetlb cgroup charge sits with the stager's cgroup.
    A container that maps the staged file MAP_SHARED finds the pages already in the file and
    faults no new ones: it is charged nothing for them.  Requesting `hugepages-1Gi` equal to
    the model would count the node's pages twice and leave pods unschedulable.
  - What the engine allocates itself in huge pages (through the preload library: a
    CPU_REPACK or AMX copy of the weights, other large buffers) is faulted in by the pod and
    charged to it.  That, and only that, is the pod's hugepages request.

The engine runs with the preload library (bind-mounted read-only), pointed at the staged
file directly: the library maps hugetlbfs files as they are (MAP_SHARED) and puts large
allocations in huge pages.  No store index is needed inside the container.  Only the model's
own staged files are bound into it, each read-only: a container sees no other model.

The node agent shows the pid and name of every process that maps huge pages: it listens on
the node's loopback only (host network), and a cluster Prometheus reaches it through a
NetworkPolicy of the operator's (docs/containers.md).
"""

import enum
import json
import re
from dataclasses import dataclass

from hugeload import pages

MODELS_INSIDE = "/models/hugeload"
LIB_INSIDE = "/opt/hugeload/libhugeload.so"
# Variables the preload library reads from the environment (csrc/hugeload.c); the rest of
# the runner's environment (PATH, HOME, ...) is the host's and must not leak in.
PRELOAD_ENV_PREFIX = "HUGELOAD_"
NOT_FOR_CONTAINERS = ("HUGELOAD_STATE_DIR", "HUGELOAD_REPORT")
AGENT_PORT = 9464  # the exporter's default port (cli/cmd_exporter.py)
STATE_DIR = "/run/hugeload"
CONFIG_DIR = "/etc/hugeload"


class Engine(enum.Enum):
    DOCKER = "docker"
    PODMAN = "podman"
    COMPOSE = "compose"
    K8S = "k8s"


class Kind(enum.Enum):
    DEPLOYMENT = "deployment"
    POD = "pod"


@dataclass(frozen=True)
class ContainerModel:
    """What the plan needs of a store manifest (the API's staging.StagedModel is the caller's view)."""

    name: str
    page_size_kb: int
    pages: int
    mount_dir: str  # the hugetlbfs mount on the host that holds <name>/<file>
    files: tuple[str, ...]  # base names; the first is given to the engine


@dataclass(frozen=True)
class Options:
    engine: Engine = Engine.DOCKER
    kind: Kind = Kind.DEPLOYMENT
    image: str = "llama-server-hugeload:local"
    command: tuple[str, ...] = ("llama-server",)
    args: tuple[str, ...] = ()  # after -m MODEL
    port: int = 8080
    host_lib: str = ""  # the preload library on the host (node)
    env: tuple[tuple[str, str], ...] = ()  # HUGELOAD_* for the library
    heap_bytes: int = 0  # what the engine allocates itself in huge pages (its charge)
    memory: str = "2Gi"  # the pod's ordinary memory request and limit (4 KB pages)
    name: str = ""  # workload name (default: from the model name)
    agent_image: str = "hugeload:local"
    models_dir: str = "/var/lib/hugeload/models"  # where the node agent reads model sources


def model_path_inside(model: ContainerModel) -> str:
    return f"{MODELS_INSIDE}/{model.name}/{model.files[0]}"


def model_binds(model: ContainerModel) -> list[tuple[str, str]]:
    """(host path, path inside) of each of the model's staged files, the only model files a
    container gets: binding the whole mount would show it every model staged on the node.
    A bind holds the file it was made with: a model staged again under the same name (a new
    file) reaches a container when it is started again."""
    return [(f"{model.mount_dir}/{model.name}/{f}", f"{MODELS_INSIDE}/{model.name}/{f}") for f in model.files]


def heap_page_kb(nbytes: int) -> int:
    """The page size the preload library tries first for one allocation of `nbytes`: the one
    rule of hugeload.pages (what HUGELOAD_POLICY carries to the C side)."""
    return pages.first_page(nbytes).kb


def heap_request(nbytes: int) -> dict[str, str]:
    """Kubernetes hugepages resources for what the pod allocates itself (empty when nothing)."""
    if nbytes <= 0:
        return {}
    kb = heap_page_kb(nbytes)
    if kb == pages.PAGE_1G.kb:
        return {"hugepages-1Gi": f"{pages.PAGE_1G.pages_for(nbytes)}Gi"}
    return {"hugepages-2Mi": f"{pages.PAGE_2M.pages_for(nbytes) * 2}Mi"}


def environment(opts: Options) -> dict[str, str]:
    env = {k: v for k, v in opts.env if k.startswith(PRELOAD_ENV_PREFIX) and k not in NOT_FOR_CONTAINERS}
    env["LD_PRELOAD"] = LIB_INSIDE
    return dict(sorted(env.items()))


def engine_argv(model: ContainerModel, opts: Options, host: str = "0.0.0.0") -> list[str]:
    argv = [*opts.command, "-m", model_path_inside(model)]
    if opts.command and opts.command[0].endswith("llama-server") and "--host" not in opts.args:
        argv += ["--host", host, "--port", str(opts.port)]
    return argv + list(opts.args)


def publishes_port(opts: Options) -> bool:
    """llama-server on its default TCP listener (not a --host of the caller's, e.g. a unix socket)."""
    return bool(opts.command) and opts.command[0].endswith("llama-server") and "--host" not in opts.args


def workload_name(model: ContainerModel, opts: Options) -> str:
    """A DNS-1123 label from the model name (Kubernetes object names)."""
    if opts.name:
        return opts.name
    base = re.sub(r"[^a-z0-9-]+", "-", model.name.lower()).strip("-") or "model"
    return f"llama-{base}"[:63].rstrip("-")


# ---------------------------------------------------------------- docker / podman


def run_args(model: ContainerModel, opts: Options) -> list[str]:
    """`docker run` / `podman run` arguments, image and command included.  The model
    directory and the library are read-only; the engine maps the staged file MAP_SHARED."""
    args = ["run", "--rm", "--read-only"]
    for host, inside in model_binds(model):
        args += ["-v", f"{host}:{inside}:ro"]
    args += ["-v", f"{opts.host_lib}:{LIB_INSIDE}:ro"]
    for k, v in environment(opts).items():
        args += ["-e", f"{k}={v}"]
    if publishes_port(opts):
        args += ["-p", f"127.0.0.1:{opts.port}:{opts.port}"]
    return args + [opts.image, *engine_argv(model, opts)]


# ---------------------------------------------------------------- compose


def compose(model: ContainerModel, opts: Options) -> dict:
    service = {
        "image": opts.image,
        "command": engine_argv(model, opts)[len(opts.command) :] if opts.command else [],
        "entrypoint": list(opts.command),
        "read_only": True,
        "environment": environment(opts),
        "volumes": [
            *(
                {"type": "bind", "source": host, "target": inside, "read_only": True}
                for host, inside in model_binds(model)
            ),
            {"type": "bind", "source": opts.host_lib, "target": LIB_INSIDE, "read_only": True},
        ],
    }
    if publishes_port(opts):
        service["ports"] = [f"127.0.0.1:{opts.port}:{opts.port}"]
    return {"services": {workload_name(model, opts): service}}


# ---------------------------------------------------------------- kubernetes


def _labels(model: ContainerModel, opts: Options) -> dict:
    return {
        "app.kubernetes.io/name": workload_name(model, opts),
        "app.kubernetes.io/part-of": "hugeload",
        "hugeload.io/model": re.sub(r"[^A-Za-z0-9._-]", "_", model.name)[:63].strip("._-") or "model",
    }


def pod_spec(model: ContainerModel, opts: Options) -> dict:
    resources = {"memory": opts.memory, **heap_request(opts.heap_bytes)}
    container = {
        "name": "engine",
        "image": opts.image,
        "command": list(opts.command),
        "args": engine_argv(model, opts)[len(opts.command) :],
        "env": [{"name": k, "value": v} for k, v in environment(opts).items()],
        # Kubernetes requires hugepages requests equal to limits, and a memory or cpu request.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        "volumeMounts": [
            *(
                {"name": f"hugeload-model-{i}", "mountPath": inside, "readOnly": True}
                for i, (_, inside) in enumerate(model_binds(model))
            ),
            {"name": "hugeload-lib", "mountPath": LIB_INSIDE, "readOnly": True},
        ],
    }
    if publishes_port(opts):
        container["ports"] = [{"name": "http", "containerPort": opts.port}]
    return {
        "containers": [container],
        "volumes": [
            *(
                {"name": f"hugeload-model-{i}", "hostPath": {"path": host, "type": "File"}}
                for i, (host, _) in enumerate(model_binds(model))
            ),
            {"name": "hugeload-lib", "hostPath": {"path": opts.host_lib, "type": "File"}},
        ],
    }


def k8s_workload(model: ContainerModel, opts: Options) -> dict:
    name, labels = workload_name(model, opts), _labels(model, opts)
    if opts.kind is Kind.POD:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": pod_spec(model, opts),
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(model, opts)},
        },
    }


def k8s_agent(opts: Options) -> dict:
    """The node agent: `hugeload restore` at node start (an init container), then the exporter
    with release under pressure.  It reserves pages and mounts hugetlbfs, so it is privileged
    and its state directory propagates mounts to the host (the pods' hostPath sees them);
    hostPID lets it see which processes map a model (pages in use are never released).  What
    it exports names every such process, so it serves on the node's loopback only (host
    network): the node, not the cluster, can scrape it."""
    labels = {"app.kubernetes.io/name": "hugeload-agent", "app.kubernetes.io/part-of": "hugeload"}
    mounts = [
        {"name": "state", "mountPath": STATE_DIR, "mountPropagation": "Bidirectional"},
        {"name": "config", "mountPath": CONFIG_DIR},
        {"name": "models", "mountPath": opts.models_dir, "readOnly": True},
        {"name": "sys", "mountPath": "/sys"},
    ]
    security = {"privileged": True}
    env = [{"name": "HUGELOAD_STATE_DIR", "value": STATE_DIR}, {"name": "HUGELOAD_CONFIG_DIR", "value": CONFIG_DIR}]
    restore = {
        "name": "restore",
        "image": opts.agent_image,
        "command": ["hugeload", "restore"],
        "env": env,
        "securityContext": security,
        "volumeMounts": mounts,
    }
    agent = {
        "name": "agent",
        "image": opts.agent_image,
        "command": ["hugeload", "exporter", "--listen", f"127.0.0.1:{AGENT_PORT}", "--release-under-pressure"],
        "env": env,
        "securityContext": security,
        "volumeMounts": mounts,
        "resources": {"requests": {"memory": "64Mi", "cpu": "10m"}, "limits": {"memory": "256Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "hugeload-agent", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "hugeload-agent"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "hostPID": True,
                    "hostNetwork": True,  # its loopback is the node's: reachable from the node only
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "priorityClassName": "system-node-critical",
                    "initContainers": [restore],
                    "containers": [agent],
                    "volumes": [
                        {"name": "state", "hostPath": {"path": STATE_DIR, "type": "DirectoryOrCreate"}},
                        {"name": "config", "hostPath": {"path": CONFIG_DIR, "type": "DirectoryOrCreate"}},
                        {"name": "models", "hostPath": {"path": opts.models_dir, "type": "Directory"}},
                        {"name": "sys", "hostPath": {"path": "/sys", "type": "Directory"}},
                    ],
                },
            },
        },
    }


def k8s_manifests(model: ContainerModel, opts: Options, agent: bool = True) -> list[dict]:
    return [k8s_workload(model, opts), *([k8s_agent(opts)] if agent else [])]


# ---------------------------------------------------------------- YAML text

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if v is None:
        return "null"
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def _yaml(v, indent: int) -> list[str]:
    pad = "  " * indent
    lines = []
    if isinstance(v, dict):
        for k, item in v.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_scalar(k)}:")
                lines += _yaml(item, indent + (0 if isinstance(item, list) else 1))
            else:
                lines.append(f"{pad}{_scalar(k)}: {_empty(item) if isinstance(item, (dict, list)) else _scalar(item)}")
    elif isinstance(v, list):
        for item in v:
            if isinstance(item, (dict, list)) and item:
                sub = _yaml(item, indent + 1)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {_empty(item) if isinstance(item, (dict, list)) else _scalar(item)}")
    return lines


def _empty(v) -> str:
    return "{}" if isinstance(v, dict) else "[]"


def to_yaml(docs: list[dict]) -> str:
    """Block-style YAML, one document per object, strings quoted where YAML would retype
    them.  Kept here so the CLI needs no YAML library; the tests parse it back with PyYAML."""
    return "".join("---\n" + "\n".join(_yaml(d, 0)) + "\n" for d in docs)
