"""The user-facing docs (README.md, docs/*.md) name things that exist.

    pytest tests/test_docs.py

Text only, but for models/data.py's source registry (a few seconds) and models/report.py's
results table (what results.md shows): every Markdown table row
has its header's number of cells (a row whose cells slid into the next one renders as a broken
table: README's reliability table had two such rows, one answer in the wrong row, until
2026-12-05); every
relative link and its #anchor resolves; every `python -m stages.X` / project module, every
`python scripts/X.py` / `bench/X.py` and each `--flag` written beside it, and every `make X`
exists; every params.yaml key the docs name (`train.device`, `-S ingest.fold=k`) is in
params.yaml, but for the few named on purpose that are not (KNOWN_ABSENT: the README's examples of
mistyped keys, keys params.yaml leaves out by design).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# named in the docs, absent from params.yaml on purpose
KNOWN_ABSENT = {
    "train.learning_rate": "README's reliability table: a mistyped key the inputs stage refuses",
    "train.model_config.functionals_rigde.alphas": "the same: a misspelt model name",
    "audio.hop_lenght": "the same: a mistyped key of another section",
    "register.enabld": "the same",
    "train.distributed": "docs/training.md: not in params.yaml, null = auto (DDP under torchrun)",
    "train.model_config.my_face_net": "README's 'Adding a model' example",
}
NOT_KEYS = (".json", ".py", ".md", ".csv", ".parquet", ".png", ".svg", ".html", ".pt", ".lock",
            ".yaml", ".txt")


def prose_lines(path: Path):
    """(line number, line, inside a ``` fence) of a Markdown file."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        yield number, line, fenced


def where(path: Path, number: int) -> str:
    return f"{path.relative_to(REPO)}:{number}"


def table_cells(row: str) -> int:
    return row.strip().replace("\\|", "").strip("|").count("|") + 1


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces `-`."""
    found, seen = set(), {}
    for _, line, fenced in prose_lines(path):
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading and not fenced:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_every_table_row_has_its_headers_cells():
    bad = []
    for path in DOCS:
        header = None
        for number, line, fenced in prose_lines(path):
            if fenced or not line.lstrip().startswith("|"):
                header = None
            elif header is None:
                header = (number, table_cells(line))
            elif table_cells(line) != header[1]:
                bad.append(f"{where(path, number)}: {table_cells(line)} cells, the table's header "
                           f"(line {header[0]}) has {header[1]}")
    assert not bad, "\n".join(bad)


def test_every_relative_link_resolves():
    bad = []
    for path in DOCS:
        for number, line, _ in prose_lines(path):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                file, _, anchor = target.partition("#")
                linked = (path.parent / file).resolve() if file else path
                if not linked.exists():
                    bad.append(f"{where(path, number)}: {target}: no such file")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    bad.append(f"{where(path, number)}: {target}: no heading #{anchor}")
    assert not bad, "\n".join(bad)


def test_every_module_script_flag_and_make_target_named_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    bad = []
    for path in DOCS:
        for number, line, fenced in prose_lines(path):
            for module in re.findall(r"python -m ((?:stages|models|personality)(?:\.\w+)*)", line):
                base = REPO.joinpath(*module.split("."))
                if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
                    bad.append(f"{where(path, number)}: python -m {module}: no such module")
            for script, rest in re.findall(r"python ((?:scripts|bench)/\w+\.py)([^`#;)]*)", line):
                if not (REPO / script).is_file():
                    bad.append(f"{where(path, number)}: {script}: no such file")
                    continue
                text = (REPO / script).read_text()
                bad += [f"{where(path, number)}: {script} has no {flag}"
                        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
                        if f'"{flag}"' not in text]
            spans = re.findall(r"`make ([a-z][\w-]*)", line)
            if fenced and line.startswith("make "):
                spans.append(line.split()[1])
            bad += [f"{where(path, number)}: make {t}: no such target in the Makefile"
                    for t in spans if t not in targets]
    assert not bad, "\n".join(bad)


def in_params(params: dict, key: str) -> bool:
    parts = key.split(".")
    if parts[:2] == ["train", "model_config"]:
        parts = parts[:3]  # below a model: its config fields, `train`, `source_config`, not all listed
    if parts[:2] == ["train", "source_config"] and len(parts) == 4 and is_source_option(*parts[2:]):
        return True  # an option params.yaml leaves at its code default (face_seq.length)
    node = params
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def is_source_option(sample_key: str, option: str) -> bool:
    """Whether `option` is a field of the options dataclass of the source filling `sample_key`
    (models/data.py's registry: the one import of project code here, for keys params.yaml may
    leave out)."""
    import dataclasses

    from models.data import _registrations

    try:
        (reg,) = _registrations([sample_key])
    except Exception:  # no source provides that key
        return False
    fields = {f.name for f in dataclasses.fields(reg.options)} if reg.options else set()
    return option in fields


def test_every_params_key_named_exists():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    key = re.compile(r"(?<![\w/.\-])\+{0,2}((?:%s)(?:\.\w+)+)" % "|".join(map(re.escape, params)))
    bad = []
    for path in DOCS:
        for number, line, _ in prose_lines(path):
            for name in key.findall(line):
                if name.endswith(NOT_KEYS) or name in KNOWN_ABSENT or in_params(params, name):
                    continue
                bad.append(f"{where(path, number)}: {name} is not in params.yaml")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(KNOWN_ABSENT))
def test_the_keys_named_on_purpose_stay_absent_and_named(name):
    """An allowance that no longer applies is dropped, so it cannot hide a real drift."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert not in_params(params, name), f"{name} is in params.yaml now: drop it from KNOWN_ABSENT"
    assert any(name in p.read_text(encoding="utf-8") for p in DOCS), f"no doc names {name} now"
