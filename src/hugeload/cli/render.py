"""Output helpers: rich tables for people, JSON for scripts."""

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped output (logs, CI, README examples) gets room for wide tables instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "red"}


def to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "_asdict"):
        return {k: to_jsonable(v) for k, v in obj._asdict().items()}
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        return sorted(items) if isinstance(obj, (set, frozenset)) else items
    return obj


def print_json(data: Any) -> None:
    json.dump(to_jsonable(data), sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    for i, c in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        # Cells are data (paths, [anon], [heap]), not markup; status_text() cells are Text already.
        t.add_row(*(v if isinstance(v, Text) else Text("" if v is None else str(v)) for v in r))
    return t


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "white"))
