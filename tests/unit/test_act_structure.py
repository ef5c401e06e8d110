"""act/ has no import cycle and no private name used across modules (issue 19: act/numa and
act/store imported each other, and numa used store's _copy_into, _remove_model, _sha256).

Read from the source with ast, function-level imports included (a cycle hidden inside a
function is still a cycle)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(src: Path, name: str) -> bool:
    base = src / Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports(src: Path, path: Path) -> set[str]:
    """hugeload modules `path` imports (a name imported from a package counts as its submodule
    when there is one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hugeload")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hugeload"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if is_module(src, sub) else node.module)
    return out


def act_modules(src: Path) -> dict[str, Path]:
    return {module_name(src, p): p for p in sorted((src / "hugeload" / "act").rglob("*.py"))}


def find_cycles(src: Path) -> list[str]:
    mods = act_modules(src)
    graph = {m: {i for i in imports(src, p) if i in mods and i != m} for m, p in mods.items()}
    cycles = set()

    def visit(m, stack):
        for n in sorted(graph[m]):
            if n in stack:
                cycles.add(" -> ".join(stack[stack.index(n) :] + [n]))
            elif len(stack) < len(graph):
                visit(n, stack + [n])

    for m in sorted(graph):
        visit(m, [m])
    return sorted(cycles)


def find_private_uses(src: Path) -> list[str]:
    act = set(act_modules(src))
    found = []
    for path in sorted((src / "hugeload").rglob("*.py")):
        me = module_name(src, path)
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> the act module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hugeload"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in act:
                        aliases[a.asname or a.name] = sub
                    elif node.module in act and a.name.startswith("_") and node.module != me:
                        found.append(f"{me} imports {sub}")
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.name in act and a.asname})
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id, me) != me
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{me} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_act_has_no_import_cycle():
    assert find_cycles(SRC) == []


def test_no_private_name_of_an_act_module_is_used_outside_it():
    assert find_private_uses(SRC) == []


def test_the_checks_find_what_act_had_before(tmp_path):
    act = tmp_path / "hugeload" / "act"
    act.mkdir(parents=True)
    (tmp_path / "hugeload" / "__init__.py").write_text("")
    (act / "__init__.py").write_text("")
    (act / "store.py").write_text("def stage():\n    from hugeload.act import numa\n    numa.stage()\n")
    (act / "numa.py").write_text("from hugeload.act import store\nfrom hugeload.act.store import _sha256\n")
    (tmp_path / "hugeload" / "exporter.py").write_text("from hugeload.act import store\nstore._owner_alive(1)\n")
    assert find_cycles(tmp_path) == [
        "hugeload.act.numa -> hugeload.act.store -> hugeload.act.numa",
        "hugeload.act.store -> hugeload.act.numa -> hugeload.act.store",
    ]
    assert find_private_uses(tmp_path) == [
        "hugeload.act.numa imports hugeload.act.store._sha256",
        "hugeload.exporter uses hugeload.act.store._owner_alive",
    ]
