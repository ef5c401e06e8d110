"""`hugeload container-args`: run arguments, a compose service or Kubernetes manifests for an
engine in a container on a staged model (the building is plan/container.py)."""

import json
import os
import shlex
import shutil
import subprocess

from hugeload import native, runner
from hugeload.act import store
from hugeload.cli import render
from hugeload.cli.common import add_state_dir
from hugeload.errors import UsageError
from hugeload.plan import container as plan
from hugeload.units import format_bytes, parse_size

# Options whose defaults are plan.Options' own: flag, default, help.
OPTIONS_WITH_DEFAULTS = (
    ("--image", plan.Options.image, "the engine's image (see scripts/container-image.sh)"),
    ("--memory", plan.Options.memory, "k8s: the pod's memory request and limit"),
    ("--agent-image", plan.Options.agent_image, "k8s: an image with hugeload installed"),
    ("--models-dir", plan.Options.models_dir, "k8s: where the node agent reads model sources"),
)


def register(sub) -> None:
    p = sub.add_parser(
        "container-args",
        usage="hugeload container-args [options] NAME [-- ENGINE_ARGS...]",
        help="docker/podman run arguments, a compose service or Kubernetes manifests for a staged model",
    )
    p.add_argument("--engine", default="docker", choices=[e.value for e in plan.Engine])
    p.add_argument(
        "--kind",
        default="deployment",
        choices=[k.value for k in plan.Kind],
        help="k8s: a Deployment (default) or a bare Pod",
    )
    p.add_argument("--command", default="llama-server", help="the engine inside the image (default %(default)s)")
    p.add_argument("--port", type=int, default=plan.Options.port, help="llama-server's port (default %(default)s)")
    p.add_argument(
        "--heap-copy",
        default="auto",
        metavar="auto|SIZE",
        help="what the engine copies to its own heap in huge pages (the pod's hugepages request); "
        "auto: llama.cpp's CPU_REPACK copy on this CPU for a GGUF model",
    )
    p.add_argument("--no-agent", action="store_true", help="k8s: leave out the node agent DaemonSet")
    for flag, default, text in OPTIONS_WITH_DEFAULTS:
        p.add_argument(flag, default=default, help=text + " (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON (argv list, or the objects)")
    # One positional list: argparse would give a second one nothing after `NAME --`.
    p.add_argument(
        "model", nargs="+", metavar="NAME [-- ARGS]", help="the staged model, then engine arguments after -m MODEL"
    )
    add_state_dir(p)
    p.set_defaults(func=run)


def staged_model(name: str, state_dir) -> tuple[store.Manifest, plan.ContainerModel]:
    m = store.resolve(name, state_dir)
    states = {store.file_state(f) for f in m.files}
    if states != {"ready"}:
        raise UsageError(
            f"model {m.name!r} is {', '.join(sorted(states - {'ready'}))}, not ready: hugeload load it again"
        )
    if any(f.parts for f in m.files):
        raise UsageError(
            f"model {m.name!r} is staged in mixed page sizes (1G, then 2M pages), which a container cannot mount as "
            "one file: stage it again with --page-size 2m, or reserve enough 1G pages first"
        )
    mnt = os.path.dirname(os.path.dirname(m.path))
    return m, plan.ContainerModel(
        m.name, m.page_size_kb, m.pages, mnt, tuple(os.path.basename(f.staged) for f in m.files)
    )


def heap_bytes(text: str, m: store.Manifest, root) -> int:
    """The pod's own huge-page allocations: the heap copies llama.cpp makes of the weights
    on this CPU and build (plan/buffers, the predictor `hugeload run` uses), or SIZE."""
    if text != "auto":
        return parse_size(text)
    if not m.path.endswith(".gguf"):
        return 0
    total = 0
    for f in m.files:
        p = runner.predict_buffers(f.staged, root=root)
        if p is None:
            render.err_console.print(
                "hugeload: no gguf package to size the heap copy; requesting no hugepages "
                "(pip install 'hugeload[gguf]' or pass --heap-copy SIZE)"
            )
            return 0
        total += p.heap_bytes
    return total


PACKAGES = {"podman": "podman runc", "docker": "docker.io"}  # Debian's names


def runtime_note(runtime: str, image: str) -> str:
    """Why the printed command would not run here ("" when it would): the arguments are
    still printed, for another machine, but the user hears about it in one line."""
    exe = shutil.which(runtime)
    if exe is None:
        return f"{runtime} is not installed here (apt-get install {PACKAGES.get(runtime, runtime)})"
    try:
        r = subprocess.run([exe, "image", "inspect", image], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if r.returncode:
        return f"image {image} is not built here (scripts/container-image.sh --tag {image} builds it)"
    return ""


def run(args) -> int:
    name, *engine_args = args.model
    engine_args = engine_args[1:] if engine_args[:1] == ["--"] else engine_args
    m, model = staged_model(name, args.state_dir)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    # The library's settings are the ones `hugeload run` would give it, minus host paths.
    env = runner.environment(runner.PreloadOptions(), args.state_dir, base={})
    opts = plan.Options(
        engine=plan.Engine(args.engine),
        kind=plan.Kind(args.kind),
        image=args.image,
        command=tuple(shlex.split(args.command)),
        args=tuple(engine_args),
        port=args.port,
        host_lib=str(native.library_path().resolve()),
        env=tuple(env.items()),
        heap_bytes=heap_bytes(args.heap_copy, m, args.root) if args.engine == "k8s" else 0,
        memory=args.memory,
        agent_image=args.agent_image,
        models_dir=args.models_dir,
    )
    if opts.engine in (plan.Engine.DOCKER, plan.Engine.PODMAN):
        argv = [opts.engine.value, *plan.run_args(model, opts)]
        print(json.dumps(argv) if args.json else shlex.join(argv))
        note = runtime_note(opts.engine.value, opts.image)
        if note:
            render.err_console.print(f"hugeload: note: {note}")
        return 0
    docs = (
        [plan.compose(model, opts)]
        if opts.engine is plan.Engine.COMPOSE
        else plan.k8s_manifests(model, opts, agent=not args.no_agent)
    )
    if args.json:
        render.print_json(docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs})
    else:
        print(plan.to_yaml(docs), end="")
    if opts.engine is plan.Engine.K8S:
        req = plan.heap_request(opts.heap_bytes)
        render.err_console.print(
            f"hugeload: {m.name}: {m.pages} staged page(s) charged to the stager, none requested; "
            + (
                f"{', '.join(f'{k}: {v}' for k, v in req.items())} for the engine's own heap copy "
                f"({format_bytes(opts.heap_bytes)})"
                if req
                else "no heap copy expected"
            )
        )
    return 0
