"""Models to re-stage at boot: the desired-state file models.json in the config directory
(default /etc/hugeload, which survives reboots, unlike the store under /run)."""

import json
import os
from pathlib import Path

from hugeload.act import state

DEFAULT_CONFIG_DIR = "/etc/hugeload"


def config_path(config_dir=None) -> Path:
    return Path(config_dir or os.environ.get("HUGELOAD_CONFIG_DIR") or DEFAULT_CONFIG_DIR) / "models.json"


def load(config_dir=None) -> list[dict]:
    return state.read_json(config_path(config_dir), {"models": []})["models"]


def _save(models: list[dict], config_dir=None) -> None:
    path = config_path(config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state.write_text_atomic(path, json.dumps({"models": models}, indent=2, sort_keys=True) + "\n", mode=0o644)


def add(name: str, source: str, page_size_kb: int, config_dir=None) -> None:
    models = [m for m in load(config_dir) if m["name"] != name]
    models.append({"name": name, "source": source, "page_size_kb": page_size_kb})
    _save(models, config_dir)


def remove(name: str, config_dir=None) -> None:
    if not config_path(config_dir).exists():
        return
    models = load(config_dir)
    kept = [m for m in models if m["name"] != name]
    if kept != models:
        _save(kept, config_dir)
