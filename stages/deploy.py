"""deploy: label an unlabelled AU corpus with a trained AU model (PerFeX's dataset output).

    python -m stages.deploy        # params.yaml:deploy -> data/deploy/

The corpus is the pipeline's own `data/aus` (`deploy.corpus: aus`, optionally only some splits)
or a folder of OpenFace FeatureExtraction CSVs (`deploy.corpus: <folder>`, one sequence per CSV,
read by the `aus` stage's OpenFace reader with its params: the face `aus.openface_face_id` keeps
of a multi-face CSV, and `aus.presence_threshold` for a missing AUxx_c, so that deploy and the
pipeline score the same face of the same file). The model is a name (data/models/NAME/best.pt, or
data/retrained/models/NAME+retrained/best.pt) or a checkpoint path; it must read AUs only. When
NAME+retrained does not exist (a source without a user study skips retraining), NAME is used,
with a warning. A model name whose base is not in `train.models` (a zoo experiment such as
`dvc exp run -S 'train.models=[logmel_cnn]'`) is not part of the experiment: the stage writes an
empty data/deploy/ with skipped.json instead of labelling with a stale checkpoint. A checkpoint
trained on AUs from other frames / faces / aus params than params.yaml's is refused for
`deploy.corpus: aus` (data/aus would not be the kind of sequence it learnt from).

Outputs (data/deploy/):
  labels.parquet      one row per sequence: video_id, O..N scores, O_bin..N_bin (the 5-bin class,
                      floor(4p) clipped to 0-4), n_frames, model (NAME+retrained for a
                      retrained checkpoint), checkpoint, checkpoint_sha256
  perfex_export.csv   PerFeX's per-frame layout: ID, File, frame, AU*_r, AU*_c, and the predicted
                      extroversion, neuroticism, agreeableness, conscientiousness, openness
  summary.json        n_sequences, n_frames, model, checkpoint, and `failed`: a list of
                      {video_id: the file name, error: why}, one per CSV of a CSV corpus that was
                      not labelled (unreadable, empty, cut off, a symlink out of the folder); the
                      others are labelled
"""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, ParamsError, StageInputError, atomic_dir,
                           atomic_write_json, by_video, check_utf8_path, experiment_models,
                           find_checkpoint, frontend_differences, frontend_params, get_logger,
                           is_checkpoint_path, load_params_keys, read_artifact, repo_root,
                           run_stage, safe_join, shown_path, write_artifact)
from personality.schemas import AU_INTENSITY, AU_PRESENCE, TRAITS

log = get_logger("deploy")

PERFEX_TRAIT_COLUMNS = {"E": "extroversion", "N": "neuroticism", "A": "agreeableness",
                        "C": "conscientiousness", "O": "openness"}


@dataclasses.dataclass(frozen=True)
class DeployParams:
    model: str = "perfex_hybrid+retrained"  # trained or retrained model name, or checkpoint path
    corpus: str = "aus"  # "aus" (data/aus) or a folder of OpenFace CSVs
    splits: list[str] = dataclasses.field(default_factory=list)  # corpus aus: [] = every video
    export_csv: bool = True  # also write PerFeX's per-frame CSV
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class OpenFaceReading:
    """aus.openface_face_id and aus.presence_threshold: a CSV corpus is read as the aus stage
    reads OpenFace CSVs (stages may not import each other, so the two keys are read here)."""
    openface_face_id: int = -1  # face kept of a multi-face CSV; -1 = most successful frames
    presence_threshold: float = 1.0  # a missing AUxx_c = AUxx_r >= this


def openface_reading(path: Path | None = None) -> OpenFaceReading:
    return load_params_keys("aus", OpenFaceReading, path)


def load_corpus(p: DeployParams, root: Path, reading: OpenFaceReading = OpenFaceReading(),
                failed: dict[str, str] | None = None) -> pd.DataFrame:
    """The per-frame AU table to label (the `aus` schema). A CSV corpus: each CSV that cannot be
    used goes into `failed` (file name -> why) and the others are labelled."""
    if p.corpus == "aus":
        table = read_artifact("aus", path=root / schemas.ARTIFACTS["aus"].path)
        if p.splits:
            manifest = read_artifact("manifest", path=root / schemas.ARTIFACTS["manifest"].path)
            keep = set(manifest.loc[manifest["split"].isin(p.splits), "video_id"])
            table = table[table["video_id"].isin(keep)]
        return table
    folder = Path(p.corpus) if Path(p.corpus).is_absolute() else root / p.corpus
    return read_csv_corpus(folder, reading, {} if failed is None else failed)


def read_csv_corpus(folder: Path, reading: OpenFaceReading, failed: dict[str, str]) -> pd.DataFrame:
    """Every <name>.csv of `folder` as one sequence `name`. One bad file never stops the corpus:
    it goes into `failed` (file name -> why), which data/deploy/summary.json keeps as a list. A CSV that
    resolves outside the folder (a symlink out of it) is refused, not read: the corpus is what
    the folder holds."""
    from personality.openface import read_openface_csv

    csvs = sorted(folder.glob("*.csv"))
    if not csvs:
        raise StageInputError(f"deploy.corpus: no OpenFace CSV in {folder}")
    tables = []
    for csv in csvs:
        try:
            check_utf8_path(csv)  # a sequence id is text: a Latin-1 name is named, not mangled
            tables.append(read_openface_csv(safe_join(folder, csv.name), video_id=csv.stem,
                                            face_id=reading.openface_face_id,
                                            presence_threshold=reading.presence_threshold))
        except StageInputError as exc:
            failed[shown_path(csv.name)] = str(exc)
            log.warning("skipped %s: %s", shown_path(csv.name), exc)
    if not tables:
        raise StageInputError(f"deploy.corpus: no readable OpenFace CSV in {folder}: "
                              + "; ".join(list(failed.values())[:5]))
    return pd.concat(tables, ignore_index=True)


def _shown(path: Path, root: Path | None) -> str:
    """The checkpoint as recorded in outputs: relative to the repo root when inside it, so that
    the same inputs give the same files in any checkout."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix() if root else str(path)
    except ValueError:
        return str(path)


# the front-end sections that make data/aus (the audio and functionals ones feed no AU model)
AU_FRONTEND = ("frames", "faces", "aus")
# keys of those that leave the 17 intensities an AU model reads as they are: how the artifacts
# are sharded, and the presence (AUxx_c) threshold
NOT_AU_INPUT = frozenset({"rows_per_shard", "presence_threshold"})


def check_au_frontend(ckpt: dict, ckpt_path: Path, here: dict | None) -> None:
    """A checkpoint trained on AUs that other front-end params made (another fps, face model or
    AU estimator) would read data/aus' sequences unlike its training data, and label them with
    numbers neither its pipeline nor predict gives: refused, naming the params. `here`: the
    params that made the corpus (None: not this pipeline's, e.g. a folder of OpenFace CSVs)."""
    stored = ckpt.get("frontend")
    if here is None or not isinstance(stored, dict):
        return
    differ = frontend_differences(stored, here, sections=AU_FRONTEND, ignore=NOT_AU_INPUT)
    if differ:
        raise StageInputError(f"deploy.model: {ckpt_path} was trained on AUs from other "
                              f"front-end params than params.yaml's ({'; '.join(differ[:4])}): "
                              "set them there (dvc repro) to label data/aus with it, or label "
                              "its own kind of OpenFace CSVs (deploy.corpus: a folder)")


def label_corpus(table: pd.DataFrame, ckpt_path: Path, *, batch_size: int = 64,
                 root: Path | None = None, frontend: dict | None = None) -> pd.DataFrame:
    """Scores per sequence of an AU table with an AU model checkpoint. `frontend`: the
    front-end params that made `table` (check_au_frontend; None for a CSV corpus)."""
    from models.data import build_sources, for_inference
    from models.checkpoints import require_finished
    from models.engine import load_checkpoint, predict_videos
    from models.metrics import to_bins

    model, ckpt = load_checkpoint(ckpt_path)
    require_finished(ckpt, ckpt_path)
    inputs = set(ckpt.get("inputs", []))
    if not inputs <= {"aus", "aus_mask"}:
        raise ParamsError(f"deploy.model: {ckpt_path} is a {ckpt.get('model_name')} model reading "
                          f"{sorted(inputs)}; an AU corpus can feed AU models only")
    check_au_frontend(ckpt, ckpt_path, frontend)
    ids = sorted(table["video_id"].unique())
    with tempfile.TemporaryDirectory() as tmp:  # the AU source reads an `aus` artifact folder
        write_artifact("aus", table, path=Path(tmp) / "data" / "aus")
        sources = build_sources(sorted(inputs), root=Path(tmp), video_ids=ids,
                                config=for_inference(ckpt.get("source_config", {})))
        scores = predict_videos(model, sources, ids, batch_size=batch_size)  # (n, 5)
    digest = hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    n_frames = table.groupby("video_id").size()
    bins = to_bins(scores)  # (n, 5)
    return pd.DataFrame({"video_id": ids, **{t: scores[:, k] for k, t in enumerate(TRAITS)},
                         **{f"{t}_bin": bins[:, k] for k, t in enumerate(TRAITS)},
                         "n_frames": n_frames.loc[ids].to_numpy(),
                         "model": model_label(ckpt, ckpt_path),
                         "checkpoint": _shown(ckpt_path, root), "checkpoint_sha256": digest})


def model_label(ckpt: dict, ckpt_path: Path) -> str:
    """The name a checkpoint is known by: NAME+retrained for one the retrain stage wrote (its
    params carry retrain's), which keeps its base model's model_name, else that model_name."""
    name = ckpt.get("model_name", ckpt_path.parent.name)
    return f"{name}+retrained" if "retrain" in (ckpt.get("params") or {}) else name


def perfex_export(table: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """PerFeX's long per-frame layout, with the predicted traits repeated on every frame."""
    frames = table.sort_values(["video_id", "frame_idx"])
    out = pd.DataFrame({"ID": frames["video_id"].to_numpy(), "File": frames["video_id"] + ".mp4",
                        "frame": frames["frame_idx"].to_numpy() + 1})
    for col in (*AU_INTENSITY, *AU_PRESENCE):
        out[col] = frames[col].to_numpy() if col in frames else np.nan
    scores = labels.set_index("video_id")
    for t, col in PERFEX_TRAIT_COLUMNS.items():
        out[col] = scores.loc[out["ID"], t].to_numpy()
    return out


def run(params: DeployParams, base: BaseParams, root: Path | None = None,
        trained: list[str] | None = None, reading: OpenFaceReading = OpenFaceReading()) -> dict:
    """Label the corpus; with `trained` (the stage passes train.models) a model name outside it
    skips the stage (empty data/deploy/ + skipped.json). `reading`: the stage passes aus's."""
    root = root or repo_root()
    out = root / "data" / "deploy"
    base_name = params.model.removesuffix("+retrained")
    if (trained is not None and not is_checkpoint_path(params.model, root)
            and base_name not in trained):
        reason = f"deploy.model {params.model} is not trained in this experiment ({trained})"
        log.warning("deploy skipped: %s", reason)
        with atomic_dir(out) as tmp:  # the folder appears whole or not at all
            atomic_write_json(tmp / "skipped.json", {"skipped": reason})
        return {"skipped": reason}
    try:
        ckpt = find_checkpoint(params.model, root)
    except StageInputError:
        if base_name == params.model:
            raise
        # sources without a user study have no retrained model: the trained one labels instead
        ckpt = find_checkpoint(base_name, root)
        log.warning("deploy.model %s not found (no retraining?); using %s", params.model,
                    base_name)
    failed: dict[str, str] = {}
    table = load_corpus(params, root, reading, failed)
    if table.empty:
        raise StageInputError("deploy: the corpus holds no AU frame")
    made_by = root / "params.yaml"  # the params that made data/aus (a CSV corpus: its own)
    frontend = (frontend_params(made_by, sections=AU_FRONTEND)
                if params.corpus == "aus" and made_by.exists() else None)
    labels = label_corpus(table, ckpt, batch_size=params.batch_size, root=root, frontend=frontend)
    summary = {"n_sequences": int(len(labels)), "n_frames": int(len(table)),
               "model": str(labels["model"].iloc[0]), "checkpoint": _shown(ckpt, root),
               "n_failed": len(failed), "failed": by_video(failed, "error", root=root)}
    with atomic_dir(out) as tmp:
        labels.to_parquet(tmp / "labels.parquet", index=False)
        if params.export_csv:
            perfex_export(table, labels).to_csv(tmp / "perfex_export.csv", index=False,
                                                float_format="%.4f")
        atomic_write_json(tmp / "summary.json", summary)
    log.info("deploy: labelled %d sequences (%d frames) with %s%s", len(labels), len(table),
             summary["model"], f"; {len(failed)} file(s) failed: {out / 'summary.json'}"
             if failed else "")
    return summary


def main(argv: list[str] | None = None) -> None:
    run_stage("deploy", DeployParams,
              lambda params, base: run(params, base, trained=experiment_models(),
                                       reading=openface_reading()))


if __name__ == "__main__":
    main()
