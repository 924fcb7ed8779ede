"""inputs: a fingerprint of every file the ingest source reads, so that DVC re-ingests when one
changes (a corrected label, a replaced video) and only then.

    python -m stages.inputs          # reads params.yaml:ingest -> data/inputs.json

It first checks params.yaml's `base` and `train` whole, and that every top-level section is one
a stage of dvc.yaml reads (`check_params`): a mistyped key there that no stage re-run would read
is refused before any stage runs.

Why a stage: a dataset lives wherever its params point (`ingest.folder.labels`,
`ingest.chalearn16.root`, ...), and DVC can neither take a list of paths from params nor a
dependency that is empty for the default source. This stage runs on every `dvc repro`
(`always_changed`, so `dvc status` always lists it) and rewrites data/inputs.json; ingest depends on
that file, so DVC skips ingest unless the fingerprint moved.

What a fingerprint holds, per file (its path relative to the repository when inside it, so that
another checkout or a queued experiment's copy gives the same file):
  - label, annotation and metadata files (CSV, pickles): sha256 of the content;
  - media (videos, OpenFace CSVs of a corpus): size and modification time in ns, the way DVC's
    own file-state cache works. A replaced or re-encoded video changes both; touching a file
    without changing it re-ingests (harmless). Cost: one stat per file, no read: a tree of
    10,000 clips (ChaLearn's size) took 1.3-2.1 s here on a loaded 2-core machine; DVC hashing the
    same 40 GB as a directory dependency would read every byte once.
  - a path that does not exist: `missing` (ingest reports it by name).

The same for the files other stages read from a path in params.yaml, each into its own file so
that a change re-runs only its reader (stat fingerprints; an empty param: no file):
  - data/inputs_aus.json: the OpenFace CSVs of `aus.openface_dir` (aus.backend openface_csv);
  - data/inputs_deploy.json: the CSVs of a `deploy.corpus` folder, and `deploy.model` when it is
    a checkpoint path rather than a trained model's name;
  - data/inputs_train/<model>.json, one per model of train.models and train.model_config:
    `train.weights` and `train.resume` with "{model}" replaced (train@<model> depends on its own
    file only).
"""
from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path

import yaml

from personality.common import (BaseParams, ParamsError, StageInputError, atomic_dir,
                                atomic_write_json, build_dataclass, get_logger,
                                is_checkpoint_path, load_params_file, repo_root, stage_errors)
from personality.datasets import ChaLearnParams, udiva_release_splits
from personality.datasets_au import iter_labels_records, listed_name

log = get_logger("inputs")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def _resolve(path: str, root: Path) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


def content_entry(path: Path) -> dict:
    """{"sha256": ...} of a small file, or {"missing": True}."""
    if not path.is_file():
        return {"missing": True}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest()}


def stat_entry(path: Path) -> dict:
    """{"size", "mtime_ns"} of a media file, or {"missing": True} (a name ingest refuses too: a
    NUL byte in it)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return {"missing": True}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _listed(csv_path: Path, column: str) -> list[Path]:
    """The files a labels CSV names in `column`, relative to the CSV (unreadable: none; ingest
    says why). Read by ingest's own parser: a BOM (Excel's "CSV UTF-8") or a header "video " is
    the same column there and here, or a replaced video would not re-run ingest. One record at a
    time, keeping its one cell: the list of every record took 0.76 GB a million rows."""
    try:
        header, records = iter_labels_records(csv_path)
        if column not in header:
            return []
        at = header.index(column)
        names = {fields[at].strip() for _, fields in records if len(fields) > at}
    except (StageInputError, OSError):
        return []
    return [csv_path.parent / _listed_name(csv_path.parent, name)
            for name in sorted(names - {""})]


def _listed_name(folder: Path, name: str) -> str:
    """listed_name's file, or `name` where it cannot tell which file is meant (ingest says why)."""
    try:
        return listed_name(folder, name)
    except StageInputError:
        return name


def _tree(folder: Path, suffixes: tuple[str, ...], *below: str) -> list[Path]:
    """The files under `folder` and under each of its sub-folders `below` (a dataset's split or
    recordings folders, which ingest follows when they are links to another disk; rglob does
    not step into a linked folder)."""
    tops = [folder, *(folder / b for b in below if isinstance(b, str) and b)]
    return sorted({p for top in tops if top.is_dir() for p in top.rglob("*")
                   if p.suffix.lower() in suffixes})


def _udiva_csvs(opts: dict, root: Path) -> list[Path]:
    """The parts and sessions CSVs of ingest.udiva.splits (the release's layout by default):
    those ingest reads, wherever they sit below the root."""
    base = _resolve(opts["root"], root)
    splits = opts.get("splits") or udiva_release_splits()
    return sorted({base / spec[key] for spec in splits.values() if isinstance(spec, dict)
                   for key in ("parts", "sessions") if isinstance(spec.get(key), str)})


def source_files(ingest: dict, root: Path) -> tuple[list[Path], list[Path]]:
    """(content-hashed files, stat-fingerprinted files) that `ingest.source` reads."""
    source = ingest.get("source", "synthetic")
    opts = ingest.get(source) or {}
    if source == "folder" and opts.get("labels"):
        labels = _resolve(opts["labels"], root)
        return [labels], _listed(labels, "video")
    if source == "openface_csv" and opts.get("labels"):
        labels = _resolve(opts["labels"], root)
        return [labels], _listed(labels, "file")
    if source == "perfex":
        return [_resolve(opts[k], root) for k in ("csv", "retrain_csv") if opts.get(k)], []
    if source == "chalearn16" and opts.get("root"):
        base = _resolve(opts["root"], root)
        labels = [base / opts.get(k, "") for k in ("train_labels", "val_labels", "test_labels")]
        dirs = [opts.get(k, getattr(ChaLearnParams, k)) for k in ("train_dir", "val_dir",
                                                                   "test_dir")]
        return labels, _tree(base, VIDEO_SUFFIXES, *dirs)
    if source == "udiva" and opts.get("root"):
        splits = opts.get("splits") or udiva_release_splits()
        recordings = [spec.get("recordings") for spec in splits.values() if isinstance(spec, dict)]
        return _udiva_csvs(opts, root), _tree(_resolve(opts["root"], root), VIDEO_SUFFIXES,
                                              *recordings)
    if source == "synthetic":
        from personality.synthetic import face_photos

        return list(face_photos().values()), []
    return [], []


def _key(path: Path, root: Path, source: str) -> str:
    """A file's name in the fingerprint, the same in every checkout of the project: relative to
    the repository when it is inside, the bare name for the generator's packaged face photos
    (they sit in whichever environment runs the stage), else the path as given."""
    if source == "synthetic":
        return f"synthetic:{path.name}"
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):  # outside; a NUL byte; a loop of links (3.11)
        return str(path)


def fingerprint(ingest: dict, root: Path) -> dict:
    """{"source": .., "files": {path: entry}} for every file the source reads."""
    source = ingest.get("source", "synthetic")
    hashed, stated = source_files(ingest, root)
    files = {_key(p, root, source): content_entry(p) for p in hashed}
    files.update({_key(p, root, source): stat_entry(p) for p in stated})
    return {"source": source, "n_files": len(files),
            "files": dict(sorted(files.items()))}


def _stat_all(paths: list[Path], root: Path) -> dict:
    return {_key(path, root, "params"): stat_entry(path) for path in paths}


def aus_files(aus: dict, root: Path) -> dict:
    """The OpenFace CSVs the aus stage may read (its `_from_openface`: any *.csv below the
    folder, a tree mirroring the videos' folders too)."""
    folder = aus.get("openface_dir") or ""
    if aus.get("backend") != "openface_csv" or not folder:
        return {"openface_dir": None, "files": {}}
    csvs = sorted(_resolve(folder, root).rglob("*.csv"))
    return {"openface_dir": folder, "files": _stat_all(csvs, root)}


def deploy_files(deploy: dict, root: Path) -> dict:
    """The corpus CSVs (folder/*.csv, as stages/deploy.py reads them) and a checkpoint path."""
    corpus, model = deploy.get("corpus") or "aus", deploy.get("model") or ""
    csvs = [] if corpus == "aus" else sorted(_resolve(corpus, root).glob("*.csv"))
    ckpt = [_resolve(model, root)] if model and is_checkpoint_path(model, root) else []
    return {"corpus": corpus, "files": _stat_all(csvs + ckpt, root)}


def train_files(train: dict, root: Path) -> dict[str, dict]:
    """Per model of train.models and of train.model_config: train.weights and train.resume,
    "{model}" replaced. Every configured model, not only this experiment's: an experiment of one
    model (`-S 'train.models=[x]'`) then leaves the others' files as they were, and back on the
    default models `dvc status` does not report their deps deleted (the folder is no DVC cache
    output: `dvc checkout` does not restore it)."""
    out = {}
    for name in dict.fromkeys([*(train.get("models") or []), *(train.get("model_config") or {})]):
        if Path(name).name != name or name in (".", ".."):  # it names a file under data/
            raise ValueError(f"train.models / train.model_config: {name!r} is not a model name")
        paths = {key: _resolve(train[key].replace("{model}", name), root)
                 for key in ("weights", "resume") if train.get(key)}
        out[name] = {key: {"path": _key(path, root, "params"), **stat_entry(path)}
                     for key, path in paths.items()}
    return out


def write_param_files(params: dict, root: Path) -> None:
    """data/inputs_aus.json, data/inputs_deploy.json and data/inputs_train/<model>.json."""
    atomic_write_json(root / "data" / "inputs_aus.json", aus_files(params.get("aus") or {}, root))
    atomic_write_json(root / "data" / "inputs_deploy.json",
                      deploy_files(params.get("deploy") or {}, root))
    with atomic_dir(root / "data" / "inputs_train") as tmp:
        for name, entry in train_files(params.get("train") or {}, root).items():
            atomic_write_json(tmp / f"{name}.json", entry)


def run(ingest: dict, root: Path | None = None) -> dict:
    """Fingerprint the files `ingest` (params.yaml's ingest section) reads -> data/inputs.json."""
    root = root or repo_root()
    result = fingerprint(ingest, root)
    atomic_write_json(root / "data" / "inputs.json", result)
    missing = sum(1 for e in result["files"].values() if e.get("missing"))
    log.info("inputs: %d file(s) of source %s fingerprinted%s", result["n_files"],
             result["source"], f", {missing} missing" if missing else "")
    return result


def check_params(params: dict) -> None:
    """What no stage re-run would check, checked first, on every repro: `base` and `train`
    whole (each train@<model> stage depends on single keys, so a mistyped key, model name or
    source there re-runs nothing: models/train_params.py). Every other section is a whole
    dependency of its stage, which checks it when it changes; but retrain.models against
    train.models is checked here too, before the trainings rather than after them."""
    from models.train_params import TrainParams, check_train_params, retrained_models

    build_dataclass(BaseParams, params.get("base") or {}, "base")
    train = build_dataclass(TrainParams, params.get("train") or {}, "train")
    check_train_params(train)
    retrain = (params.get("retrain") or {}).get("models")
    if isinstance(retrain, list):  # else the retrain stage names what is wrong
        retrained_models(retrain, train.models)  # some of them trained, some not: refused now
    check_sections(params, dvc_sections(repo_root() / "dvc.yaml"))


def dvc_sections(dvc_yaml: Path) -> set[str]:
    """The top-level params.yaml sections some stage of dvc.yaml reads (`ingest`, `base.seed`,
    `train.model_config.${item}` -> ingest, base, train); empty when it lists none."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return set()
    sections = set()
    for stage in stages.values():
        spec = stage.get("do", stage) if isinstance(stage, dict) else {}
        for entry in spec.get("params") or []:
            keys = [entry] if isinstance(entry, str) else [
                k for listed in entry.values() for k in (listed or [])]
            sections.update(str(k).split(".")[0] for k in keys)
    return sections


def check_sections(params: dict, known: set[str]) -> None:
    """A top-level section no stage reads (a misspelt `ingst:`, a stray key) is refused: no
    stage would ever see it, and the run would quietly use the defaults."""
    if not known:
        return
    for section in params:
        if section not in known:
            close = difflib.get_close_matches(str(section), sorted(known), n=1)
            raise ParamsError(f"{section}: unknown params.yaml section, read by no stage of "
                              "dvc.yaml" + (f" (did you mean {close[0]!r}?)" if close else ""))


def main(argv: list[str] | None = None) -> None:
    with stage_errors("inputs"):  # base and train checked; the other stages check their own
        params = load_params_file()
        check_params(params)
        run(params.get("ingest") or {})
        write_param_files(params, repo_root())


if __name__ == "__main__":
    main()
