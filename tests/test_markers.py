"""The markers say what a test needs, read from the test files themselves: a test that takes
the ``browser`` fixture (directly or through a fixture of its module) is marked ``browser``,
so ``-m "not browser"`` never starts Chromium, and a ``gpu`` test skips where there is no
CUDA device. How long a test takes is measured (``--durations``), never asserted."""

import ast
from functools import cache
from pathlib import Path

TESTS = Path(__file__).parent


@cache
def trees():
    """Each test file's name and syntax tree."""
    return [(path.name, ast.parse(path.read_text())) for path in sorted(TESTS.glob("test_*.py"))]


def mark_name(node):
    """``NAME`` for ``pytest.mark.NAME`` or ``pytest.mark.NAME(...)``, else None."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
        return node.attr if node.value.attr == "mark" else None
    return None


def module_marks(tree):
    """The marks of ``pytestmark = ...`` (one mark or a list of them)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            values = (
                node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            )
            return {mark_name(v) for v in values} - {None}
    return set()


def functions(tree):
    return [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def is_fixture(function):
    return any("fixture" in ast.unparse(d) for d in function.decorator_list)


def needing(tree, fixture):
    """The names of this module's fixtures and tests that take ``fixture``, directly or
    through another fixture of the module."""
    takes = {f.name: {a.arg for a in f.args.args} for f in functions(tree)}
    fixtures = {f.name for f in functions(tree) if is_fixture(f)}
    need = {fixture}
    while True:
        more = {name for name, args in takes.items() if args & need and name in fixtures} - need
        if not more:
            break
        need |= more
    return {name for name, args in takes.items() if args & need}


def test_every_test_that_starts_chromium_is_marked_browser():
    found, unmarked = 0, []
    for name, tree in trees():
        marked = module_marks(tree)
        users = needing(tree, "browser")
        for f in functions(tree):
            if f.name.startswith("test") and f.name in users:
                found += 1
                if "browser" not in marked | {mark_name(d) for d in f.decorator_list}:
                    unmarked.append(f"{name}::{f.name}")
    assert found >= 1, "no test takes the browser fixture: is it still called that?"
    assert not unmarked, "take the browser fixture but are not marked browser: " + ", ".join(
        unmarked
    )


def test_every_gpu_test_skips_without_a_cuda_device():
    found, unguarded = 0, []
    for name, tree in trees():
        for f in functions(tree):
            marks = module_marks(tree) | {mark_name(d) for d in f.decorator_list}
            if f.name.startswith("test") and "gpu" in marks:
                found += 1
                guards = [ast.unparse(d) for d in f.decorator_list if mark_name(d) == "skipif"] + [
                    ast.unparse(n) for n in tree.body if "pytestmark" in ast.unparse(n)
                ]
                if not any("cuda" in g for g in guards):
                    unguarded.append(f"{name}::{f.name}")
    assert found >= 1
    assert not unguarded, "marked gpu with no skipif on CUDA: " + ", ".join(unguarded)
