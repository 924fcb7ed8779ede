"""Imports point one way: personality <- models <- stages (docs: personality/__init__.py).

    pytest tests/test_layering.py

Every import statement of every .py file in personality/, models/ and stages/ is read with `ast`,
those inside functions too (a lazy import is still a dependency), and checked against the rules:

- personality/ (the bottom layer) imports neither `stages` nor `models`;
- models/ imports no `stages`;
- no stage module imports another stage module. The exceptions are the two ways to score a new
  video: `stages/predict.py`, a CLI that runs a video through the stages' own pure functions so
  that it gives exactly the pipeline's prediction, and `stages/serve.py` (with
  `stages/serve_model.py`, the file MLflow executes), the MLflow pyfunc that wraps predict.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("personality", "models", "stages")
# stage modules allowed to import other stage modules, and why (see the module docstring)
MAY_IMPORT_STAGES = {"stages/predict.py", "stages/predict_frontend.py", "stages/serve.py", "stages/serve_model.py"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in `tree`; `from a import b` gives both `a` and
    `a.b` (b may be a submodule), relative imports are resolved against nothing (none are used)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations() -> list[str]:
    bad, seen = [], set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            own = rel[:-3].replace("/", ".")
            for line, module in imported_modules(ast.parse(path.read_text(), rel)):
                top = module.split(".")[0]
                if package == "personality" and top in ("stages", "models"):
                    rule = "the bottom package imports neither stages nor models"
                elif package == "models" and top == "stages":
                    rule = "models import no stages"
                elif (package == "stages" and top == "stages" and module.count(".") == 1
                      and module != own and module != "stages.__init__"
                      and rel not in MAY_IMPORT_STAGES):
                    rule = "no stage imports another stage"
                else:
                    continue
                if (rel, line) not in seen:  # `from a import b` yields a and a.b: name it once
                    seen.add((rel, line))
                    bad.append(f"{rel}:{line}: imports {module} ({rule})")
    return bad


def test_imports_point_one_way():
    bad = violations()
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_every_module_is_checked():
    # a guard against the test passing because it read nothing
    assert (REPO / "personality" / "common.py").exists()
    assert (REPO / "stages" / "train.py").exists() and (REPO / "models" / "engine.py").exists()
