"""The package's shape: no file over 500 lines, no function over 80 (import cycles:
test_imports.py)."""

import ast
from pathlib import Path

import crumple

PACKAGE = Path(crumple.__file__).parent
MAX_FILE_LINES = 500  # a cohesive module; files follow concepts, not a cap
MAX_FUNCTION_LINES = 80


def test_files_and_functions_stay_short():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)
