"""No import cycle among crumple's modules at load time (imports inside functions aside)."""

import ast
from pathlib import Path

import crumple

ROOT = Path(crumple.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for file in ROOT.rglob("*.py"):
        parts = file.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return names


def imported_at_load(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The crumple modules that importing ``name`` imports (``if TYPE_CHECKING`` and function
    bodies aside); ``from package import name`` counts ``package.name`` if it is a module,
    else ``package`` itself."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(file.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for item in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(item, ast.Import):
                found |= {a.name for a in item.names}
            elif isinstance(item, ast.ImportFrom):
                base = item.module or ""
                if item.level:
                    up = package.split(".")[: len(package.split(".")) - item.level + 1]
                    base = ".".join(up + ([base] if base else []))
                found |= {
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in item.names
                }
    # importing a.b.c imports the packages a and a.b first (unless they hold the importer,
    # which Python is importing already)
    parents = {".".join(m.split(".")[:k]) for m in found for k in range(1, m.count(".") + 1)}
    found |= {p for p in parents if not name.startswith(f"{p}.")}
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle as the path that closes it, found by depth-first search."""
    found, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_at_load_time():
    modules = module_names()
    graph = {name: imported_at_load(name, file, modules) for name, file in modules.items()}
    assert graph["crumple.planes.builders"] >= {"crumple.plane", "crumple.params"}
    assert "crumple.planes" not in graph["crumple.plane"]  # reached inside the methods
    found = cycles(graph)
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
