"""crumple's import graph, read from the source: module-level imports and imports inside
functions alike (``if TYPE_CHECKING`` blocks aside). Each module imports only modules of its
own layer or below (the layer table of docs/architecture.md), and no import cycle exists but
the allowed facades below."""

import ast
import re
from pathlib import Path

import crumple

ROOT = Path(crumple.__file__).parent
ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"

# (importer, imported): a facade on a value type that calls its builder lazily, as xarray's
# Dataset.to_zarr calls its backend. Each closes a loop on purpose; none other may.
FACADES = {
    # Plane.axes/.random/.between/.pca/.hessian and repr: the plane-kind builders and registry
    ("crumple.plane", "crumple.planes"),
    # Grid.auto: the search that evaluates the model (crumple.landscape)
    ("crumple.grid", "crumple.landscape"),
}


def module_names() -> dict[str, Path]:
    names = {}
    for file in ROOT.rglob("*.py"):
        parts = file.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return names


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(item) for stmt in node.body for item in ast.walk(stmt)}
    return skipped


def imports_of(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The crumple modules ``name`` imports anywhere in its source; ``from package import
    name`` counts ``package.name`` if it is a module, else ``package`` itself."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(file.read_text())
    skipped = _type_checking_only(tree)
    found = set()
    for item in ast.walk(tree):
        if id(item) in skipped:
            continue
        if isinstance(item, ast.Import):
            found |= {a.name for a in item.names}
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:
                up = package.split(".")[: len(package.split(".")) - item.level + 1]
                base = ".".join(up + ([base] if base else []))
            found |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in item.names
            }
    # importing a.b.c imports the packages a and a.b first (unless they hold the importer,
    # which Python is importing already)
    parents = {".".join(m.split(".")[:k]) for m in found for k in range(1, m.count(".") + 1)}
    found |= {p for p in parents if not name.startswith(f"{p}.")}
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, file, modules) for name, file in modules.items()}


def layer_table(text: str) -> dict[str, int]:
    """``{module pattern: layer}`` from the table of docs/architecture.md whose rows read
    ``| 3 | compute | `evaluation.*`, `hessian.*` |``."""
    table = {}
    for number, modules in re.findall(r"^\| (\d) \| [^|]+ \| (.+) \|$", text, re.M):
        for pattern in re.findall(r"`([^`]+)`", modules):
            table[pattern] = int(number)
    return table


def layer_of(module: str, table: dict[str, int]) -> int | None:
    short = module.removeprefix("crumple").removeprefix(".") or "(package)"
    for pattern, number in table.items():
        base = pattern.removesuffix(".*")
        if short == base or (pattern.endswith(".*") and short.startswith(f"{base}.")):
            return number
    return None


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


def test_no_import_cycle_but_the_facades():
    edges = graph()
    assert "crumple.landscape" in edges["crumple.grid"]  # function-level imports are seen
    assert "crumple.evaluation.engine" not in edges["crumple.evaluation.choice"]  # TYPE_CHECKING
    for importer, imported in FACADES:
        assert imported in edges[importer], f"{importer} no longer needs its facade entry"
        edges[importer] = edges[importer] - {imported}
    found = cycles(edges)
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_every_import_points_down_the_layers_of_docs_architecture():
    table = layer_table(ARCHITECTURE.read_text())
    assert len(set(table.values())) == 7, table
    edges = graph()
    unplaced = sorted(m for m in edges if layer_of(m, table) is None)
    assert not unplaced, f"modules missing from the layer table of {ARCHITECTURE}: {unplaced}"
    upward = [
        f"{a} (layer {layer_of(a, table)}) imports {b} (layer {layer_of(b, table)})"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if layer_of(b, table) > layer_of(a, table) and (a, b) not in FACADES
    ]
    assert not upward, "\n".join(upward)


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    table = layer_table("| 1 | ground | `errors` |\n| 2 | values | `plane`, `planes.*` |\n")
    assert layer_of("crumple.planes.kinds", table) == 2
    assert layer_of("crumple.errors", table) < layer_of("crumple.plane", table)
    assert layer_of("crumple.surface", table) is None
