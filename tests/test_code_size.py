"""Functions short enough to read at once; big files say why they are big.

    pytest tests/test_code_size.py

Every function and method of personality/, models/, stages/ and scripts/ (read with `ast`: from
its `def` line to its last line, docstring included) is at most MAX_FUNCTION_LINES long, and a
file over MAX_FILE_LINES says in its module docstring why it is one file ("One file because ...").
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("personality", "models", "stages", "scripts")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500
# function -> why it is longer, for now
LONGER: dict[str, str] = {}


def python_files() -> list[Path]:
    return sorted(p for package in CHECKED for p in (REPO / package).rglob("*.py"))


def function_lengths(path: Path) -> list[tuple[int, str, int]]:
    """(length in lines, name, first line) of every function in `path`, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.end_lineno - node.lineno + 1, node.name, node.lineno) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_over_the_limit():
    too_long = []
    for path in python_files():
        rel = path.relative_to(REPO).as_posix()
        for length, name, line in function_lengths(path):
            if length > MAX_FUNCTION_LINES and f"{rel}:{name}" not in LONGER:
                too_long.append(f"{rel}:{line}: {name} is {length} lines "
                                f"(at most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_big_files_say_why():
    unexplained = []
    for path in python_files():
        text = path.read_text()
        n = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > MAX_FILE_LINES and "One file because" not in doc:
            unexplained.append(f"{path.relative_to(REPO)}: {n} lines and no 'One file because' "
                               "in its docstring")
    assert not unexplained, "\n".join(unexplained)
