"""Every project file a stage imports is one of its DVC deps, and every .py dep is imported.

    pytest tests/test_dvc_deps.py

For each stage of dvc.yaml (the `foreach` template of `train` included) the module its command
runs (`python -m stages.X` -> stages/X.py) is read with `ast`, then every project module it imports,
transitively: imports inside functions count (a lazy import is still code the stage runs), and so
do the strings of a module-level `*_MODULES` tuple (modules that models/data.py and
models/registry.py load by name with importlib). A package's __init__.py counts when it holds code
beyond its docstring (models/__init__.py does). A file the closure reaches and no dep covers (a dep
may be the file or a folder above it) means an edit to it would not re-run the stage: the test
names the stage and the file. A .py dep outside the closure is stale (it re-runs the stage for
nothing) and fails too. The params.yaml keys a stage module reads (run_stage, load_params,
load_params_keys, frontend_params, experiment_models, base.seed) are its `params:` too, but for
NOT_PARAMS. What no test here sees: a file a stage opens by a path it computes (the checks are
on imports), which the stage's data deps or stages/inputs.py's fingerprints must cover.
"""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("personality", "models", "stages")


def module_file(module: str) -> Path | None:
    """The project file of a dotted module name, or None (not ours, or not a module)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def has_code(init: Path) -> bool:
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def imports_of(path: Path, *, lazy: bool = True) -> set[str]:
    """Dotted names `path` imports (`from a import b` gives a and a.b), inside functions too unless
    `lazy` is False, plus the strings of module-level `*_MODULES` tuples (imported by name with
    importlib)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    nodes = ast.walk(tree) if lazy else _outside_functions(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, (ast.Tuple, ast.List))
                and any(isinstance(t, ast.Name) and t.id.endswith("_MODULES") for t in node.targets)):
            names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)
                      and isinstance(e.value, str)}
    return names


def _outside_functions(tree: ast.AST):
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo += [c for c in ast.iter_child_nodes(node)
                 if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]


def closure(module: str) -> set[str]:
    """Repo-relative paths of every project file that running `python -m module` may execute.

    Importing a.b.c runs a/__init__.py and a/b/__init__.py first: such a parent __init__.py counts
    as a file, with its module-level imports, when it holds code. Its lazy imports (the PEP 562
    `__getattr__` of models/__init__.py) count only where a name is taken from the package itself:
    `import models` or `from models import build_model`, not `from models import metrics`."""
    todo, seen, full = [module], set(), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path is None or (path.name == "__init__.py" and not has_code(path)):
                continue
            # a package named as such (the last part, not a submodule of it) runs in full
            whole = path.name != "__init__.py" or (i == len(parts) and not _is_submodule(name))
            if path in full or (path in seen and not whole):
                continue
            seen.add(path)
            if whole:
                full.add(path)
            todo += sorted(imports_of(path, lazy=whole))
    return {p.relative_to(REPO).as_posix() for p in seen}


def _is_submodule(name: str) -> bool:
    """Whether `name` is a project module file of its own (not an attribute of its package)."""
    path = module_file(name)
    return path is not None and path.name != "__init__.py"


def stages() -> dict[str, dict]:
    """name -> stage dict of dvc.yaml; a foreach stage once, as its `do` template."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in spec.items()}


def command_module(cmd: str) -> str:
    words = shlex.split(cmd)
    assert "-m" in words, f"command {cmd!r} does not run `python -m <module>`"
    return words[words.index("-m") + 1]


def dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def check(stage_name: str, stage: dict) -> list[str]:
    """The problems of one stage, each naming the stage and the file."""
    deps = [d for d in dep_paths(stage) if not re.search(r"\$\{", d)]
    imported = closure(command_module(stage["cmd"]))
    problems = [f"stage {stage_name}: imports {path} but it is not in its deps"
                for path in sorted(imported) if not covered(path, deps)]
    problems += [f"stage {stage_name}: dep {d} is a .py file the stage no longer imports (stale)"
                 for d in deps if d.endswith(".py") and d not in imported]
    return problems


@pytest.mark.parametrize("stage_name", sorted(stages()))
def test_stage_deps_cover_its_imports(stage_name):
    problems = check(stage_name, stages()[stage_name])
    assert not problems, "\n".join(problems)


def test_every_stage_module_exists():
    for name, stage in stages().items():
        assert module_file(command_module(stage["cmd"])), f"stage {name}: no module for {stage['cmd']}"


def test_closure_follows_lazy_and_by_name_imports():
    # guards the reader itself: train imports models.data lazily, which loads the sources by name
    assert {"stages/train.py", "models/data.py", "models/data_image.py", "models/data_audio.py",
            "personality/common.py"} <= closure("stages.train")


# params.yaml keys a stage reads that are deliberately not its DVC params: they change no output
# byte (tests/test_executor_stages.py for workers), or the foreach template names its own part
NOT_PARAMS = {
    "train.models": "the foreach axis: train@<name> is one model of it",
    "train.model_config": "train.model_config.${item}: the stage's own model's entry only",
    # a launch mode: under `dvc repro` (one process) null and false train alike, and true fails
    "train.distributed": "DDP under torchrun (docs/training.md)",
}


def params_read(module: str) -> set[str]:
    """The params.yaml keys the stage module `module` reads, from its calls: run_stage(X) and
    load_params(X, Cls) read every field of Cls under X, load_params_keys(X, Cls) those fields
    too (a few of another stage's keys), frontend_params() the front-end sections whole (or
    those of its `sections=`), experiment_models() train.models, and an attribute `.seed` of a
    `base` expression base.seed (base.workers and base.log_level change no output byte, so no
    stage lists them)."""
    import dataclasses
    import importlib

    from personality.common import FRONTEND_SECTIONS

    mod = importlib.import_module(module)
    keys: set[str] = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "seed" and any(
                isinstance(n, ast.Name) and n.id == "base" for n in ast.walk(node.value)):
            keys.add("base.seed")
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        args = node.args
        if (name in ("run_stage", "load_params", "load_params_keys") and len(args) >= 2
                and isinstance(args[0], ast.Constant) and isinstance(args[1], ast.Name)):
            cls = getattr(mod, args[1].id)
            keys |= {f"{args[0].value}.{f.name}" for f in dataclasses.fields(cls)}
        elif name == "frontend_params":  # sections=NAME: a tuple the module defines
            named = [getattr(mod, k.value.id) for k in node.keywords
                     if k.arg == "sections" and isinstance(k.value, ast.Name)]
            keys |= set(named[0] if named else FRONTEND_SECTIONS)
        elif name == "experiment_models":
            keys.add("train.models")
    return keys


@pytest.mark.parametrize("stage_name", sorted(stages()))
def test_stage_params_cover_the_keys_its_code_reads(stage_name):
    """A key a stage reads and does not list (dvc.yaml `params:`) changes its output and DVC
    serves the cached one: each is listed, whole or through a section above it."""
    stage = stages()[stage_name]
    listed = [p.replace(".${item}", "") for p in stage.get("params") or []]
    read = params_read(command_module(stage["cmd"])) - {"base.workers", "base.log_level"}
    missing = sorted(k for k in read if k not in NOT_PARAMS and not any(
        k == p or k.startswith(p + ".") for p in listed))
    assert not missing, f"stage {stage_name}: reads {missing} but dvc.yaml does not list them"


def cached_outputs(stage: dict) -> list[str]:
    """The outputs DVC keeps in its cache (not in git): outs, metrics and plots without
    `cache: false`."""
    paths = []
    for key in ("outs", "metrics", "plots"):
        for out in stage.get(key) or []:
            path, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if (options or {}).get("cache", True):
                paths.append(path)
    return paths


@pytest.mark.parametrize("stage_name", sorted(stages()))
def test_a_fresh_clone_runs_every_stage(stage_name):
    """A stage whose outputs are all in git, on inputs that come out byte-identical, is up to
    date in a fresh clone and DVC skips it: its side effects (MLflow runs, the registered model)
    would never reach the clone's mlflow.db. So each stage has an output git does not carry, or
    runs on every repro."""
    stage = stages()[stage_name]
    assert cached_outputs(stage) or stage.get("always_changed"), (
        f"stage {stage_name}: every output is in git; give it a DVC-cached one "
        "(personality.common.write_tracking_receipt)")


def test_make_clean_deletes_every_data_output():
    """`make clean` lists by hand what it deletes; an output of dvc.yaml under data/ that it
    missed (functionals, augmented, retrained, ... were) outlives the data it was built from."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = {out if isinstance(out, str) else next(iter(out))
            for stage in stages.values() for out in stage.get("do", stage).get("outs") or []}
    wanted = {re.sub(r"/[^/]*\$\{item\}.*$", "", out) for out in outs if out.startswith("data/")}
    wanted = {out.split("/tracked/")[0] + "/tracked" if "/tracked/" in out else out
              for out in wanted}
    recipe = re.search(r"^clean:\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    deleted = set(shlex.split(recipe.replace("\\\n", " ")))
    assert wanted - deleted == set()
