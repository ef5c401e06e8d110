"""Models to re-stage at boot: the desired-state file models.json in the config directory
(default /etc/hugeload, which survives reboots, unlike the store under /run).

Changed only by read-modify-write under models.json.lock (the store calls add and remove
under its own lock too), so two commands never drop each other's entries."""

import contextlib
import json
import os
from pathlib import Path

from hugeload.act import state

DEFAULT_CONFIG_DIR = "/etc/hugeload"


def config_path(config_dir=None) -> Path:
    return Path(config_dir or os.environ.get("HUGELOAD_CONFIG_DIR") or DEFAULT_CONFIG_DIR) / "models.json"


def load(config_dir=None) -> list[dict]:
    data = state.read_json(config_path(config_dir), {"models": []})
    models = data.get("models", []) if isinstance(data, dict) else []
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("name"), str) and "source" in m]


@contextlib.contextmanager
def editing(config_dir=None):
    """The entries, under the lock; written back (atomically, 0644) when the block changed them."""
    path = config_path(config_dir)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    state.check_dir(path.parent, "config directory")
    with state.locked(path.with_name(path.name + ".lock")):
        models = load(config_dir)
        before = json.dumps(models, sort_keys=True)
        yield models
        if json.dumps(models, sort_keys=True) != before:
            state.write_text_atomic(path, json.dumps({"models": models}, indent=2, sort_keys=True) + "\n", mode=0o644)


def add(name: str, source: str, page_size_kb: int, config_dir=None, group: str | None = None) -> None:
    with editing(config_dir) as models:
        models[:] = [m for m in models if m["name"] != name]
        entry = {"name": name, "source": source, "page_size_kb": page_size_kb}
        if group is not None:
            entry["group"] = group
        models.append(entry)


def remove(name: str, config_dir=None) -> None:
    if not config_path(config_dir).exists():
        return
    with editing(config_dir) as models:
        models[:] = [m for m in models if m["name"] != name]
