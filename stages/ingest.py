"""ingest: turn a data source into the manifest (one row per video) and the user-study table.

    python -m stages.ingest          # reads params.yaml:base,ingest -> data/manifest.parquet, ...

Sources (`ingest.source`; options under `ingest.<source>`):
  synthetic     the embedded default dataset, generated offline from `base.seed` (personality/synthetic.py)
  folder        a directory of videos and a labels CSV (`ingest.folder.labels`)
  chalearn16    ChaLearn First Impressions V2: split folders of mp4 + annotation pickles
  udiva         UDIVA v0.5: parts_*.csv / sessions_*.csv + session folders of FC1_T.mp4, ...
  perfex        PerFeX's long AU CSV (no video) + optional retraining ratings CSV
  openface_csv  a folder of OpenFace FeatureExtraction CSVs + a labels CSV (no video)
(personality/datasets.py and personality/datasets_au.py hold the real-dataset adapters.) Splits
are decided here, by subject, once: every later stage keeps them.

Outputs: data/manifest.parquet, data/user_study.parquet, data/synthetic_cues.parquet and
data/synthetic_tracks.parquet (synthetic only: latent cues, face photo and mean unit strengths per
clip, unit strengths per rendered frame; empty otherwise), data/videos/ (synthetic clips),
data/source_aus/ (AU sequences of the sources that have no video, empty otherwise),
metrics/ingest.json (counts, bad rows).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd

from personality import csv_tables, datasets, datasets_au, schemas
from personality.probing import WorkerProbe, probe_facts
from personality.splits import (assign_splits, check_required_splits, check_subject_splits,
                                few_subject_warnings, finish_splits, kfold_splits,
                                subject_warnings)
from personality.common import (BaseParams, StageInputError, atomic_write_json, get_logger,
                           progress, repo_root, resolve_untrusted, write_artifact, run_stage)
from personality.schemas import SPLITS, TRAITS

log = get_logger("ingest")


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    n_videos: int = 150
    n_subjects: int = 50
    min_seconds: float = 6.0
    max_seconds: float = 10.0
    fps: float = 25.0
    width: int = 320
    height: int = 240
    sample_rate: int = 16000
    user_study_share: float = 0.5  # share of clips the simulated raters score
    n_raters: int = 15
    raters_per_video: int = 6


@dataclasses.dataclass(frozen=True)
class FolderParams:
    labels: str = ""  # CSV: video (relative to the CSV), O, C, E, A, N [, subject, split]
    dataset: str = "folder"
    strict: bool = False  # true: any bad row fails the stage; false: bad rows reported and dropped


@dataclasses.dataclass(frozen=True)
class IngestParams:
    source: Literal["synthetic", "folder", "chalearn16", "udiva", "perfex",
                    "openface_csv"] = "synthetic"
    split: list[float] = dataclasses.field(default_factory=lambda: [0.7, 0.15, 0.15])
    # shares: `split` shares of subjects; kfold: subjects in n_folds folds, fold `fold` is test,
    # fold + 1 val, the rest train (cross-validation: one `dvc exp run -S ingest.fold=k` per fold)
    split_mode: Literal["shares", "kfold"] = "shares"
    # splits that must hold at least one subject, else ingest refuses before any work; a corpus
    # that is only labelled by a trained model (deploy) may ask for fewer
    required_splits: list[str] = dataclasses.field(default_factory=lambda: list(SPLITS))
    n_folds: int = 5
    fold: int = 0
    synthetic: SyntheticParams = SyntheticParams()
    folder: FolderParams = FolderParams()
    chalearn16: datasets.ChaLearnParams = datasets.ChaLearnParams()
    udiva: datasets.UdivaParams = datasets.UdivaParams()
    perfex: datasets_au.PerfexParams = datasets_au.PerfexParams()
    openface_csv: datasets_au.OpenFaceParams = datasets_au.OpenFaceParams()
    strict: bool = False  # real datasets: any bad item fails the stage instead of being dropped


# --------------------------------------------------------------------------------------------------
# splits (the rules: personality/splits.py)


def subject_splitter(params: "IngestParams", seed: int) -> Callable[[list[str]], dict[str, str]]:
    """subjects -> {subject: split} by `params.split_mode`: shares or k-fold (splits.kfold_splits,
    the same rule as chalearn16's kfold)."""
    if params.split_mode == "kfold":
        return lambda subjects: kfold_splits(subjects, n_folds=params.n_folds, fold=params.fold,
                                             seed=seed)
    return lambda subjects: assign_splits(subjects, params.split, seed)


# --------------------------------------------------------------------------------------------------
# source: synthetic


def _require_splits(split_of: dict[str, str], required: tuple[str, ...], fix: str) -> None:
    """StageInputError when a required split would hold no subject."""
    missing = [s for s in required if s not in set(split_of.values())]
    if missing:
        raise StageInputError(f"ingest: split(s) {', '.join(missing)} would be empty with "
                              f"{len(split_of)} subject(s) (splits are by subject): {fix}")


def _cue_table(video_ids: list[str], subjects: list[str], photos: list[str], cues: np.ndarray,
               rendered: list[dict]) -> pd.DataFrame:
    """data/synthetic_cues: per clip its latent cues (n, 10), the face photo it animates (who
    the clip shows: a nuisance the explain stage looks for) and its mean unit strengths."""
    from personality import synthetic as syn

    return pd.DataFrame({"video_id": video_ids, "subject_id": subjects, "face_photo": photos,
                         **{f"cue_{c}": cues[:, k] for k, c in enumerate(syn.CUES)},
                         **{f"track_{u}": [r["mean_tracks"][u] for r in rendered]
                            for u in syn.UNITS}})


def ingest_synthetic(p: SyntheticParams, assign: Callable[[list[str]], dict[str, str]],
                     seed: int, workers: int, root: Path, required: tuple[str, ...] = SPLITS
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from personality import synthetic as syn

    if p.n_videos < 1 or p.n_subjects < 1 or p.n_subjects > p.n_videos:
        raise StageInputError("ingest.synthetic: need 1 <= n_subjects <= n_videos")
    if not 0 < p.min_seconds <= p.max_seconds:
        raise StageInputError("ingest.synthetic: need 0 < min_seconds <= max_seconds")
    if p.width % 2 or p.height % 2:
        raise StageInputError("ingest.synthetic: width and height must be even (H.264 yuv420p)")
    rng = np.random.default_rng([seed, 1])
    subject_of_clip = np.concatenate([np.arange(p.n_subjects),
                                      rng.integers(0, p.n_subjects, p.n_videos - p.n_subjects)])
    subject_of_clip = np.sort(subject_of_clip)
    cues = syn.draw_cues(rng, subject_of_clip, p.n_subjects)  # (n_videos, 10)
    labels = syn.labels_from_cues(cues, rng)  # (n_videos, 5)
    durations = rng.uniform(p.min_seconds, p.max_seconds, p.n_videos)
    appearances = [syn.draw_appearance(np.random.default_rng([seed, 2, s]), 2, s)
                   for s in range(p.n_subjects)]
    subjects = [f"syn_s{s:03d}" for s in subject_of_clip]
    video_ids = [f"syn_{i:04d}" for i in range(p.n_videos)]
    split_of = assign(subjects)
    _require_splits(split_of, required, "raise ingest.synthetic.n_subjects")  # before rendering

    video_dir = root / "data" / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    for stale in video_dir.glob("*.mp4"):  # the folder holds exactly this run's clips
        if stale.stem not in set(video_ids):
            stale.unlink()
    jobs = [dict(index=i, seed=seed, video_id=vid, path=str(video_dir / f"{vid}.mp4"),
                 cues=cues[i].tolist(), appearance=appearances[subject_of_clip[i]],
                 duration=float(durations[i]), fps=p.fps, sr=p.sample_rate,
                 width=p.width, height=p.height) for i, vid in enumerate(video_ids)]
    log.info("rendering %d synthetic clips of %d subjects with %d workers", len(jobs),
             p.n_subjects, workers)
    rigs = syn.load_rigs()
    with progress(total=len(jobs), desc="ingest:synthetic", unit="clip") as bar:
        rendered = syn.render_all(jobs, rigs, workers, bar)

    manifest = pd.DataFrame({
        "video_id": video_ids,
        "label_scale": "unit",
        "path": [f"data/videos/{vid}.mp4" for vid in video_ids],
        "split": [split_of[s] for s in subjects],
        "subject_id": subjects,
        "dataset": "synthetic",
        **{t: labels[:, k] for k, t in enumerate(TRAITS)},
        "duration_s": [r["duration_s"] for r in rendered],
        "fps": [r["fps"] for r in rendered],
        "has_audio": [r["has_audio"] for r in rendered],
    })
    cue_table = _cue_table(video_ids, subjects, [rigs[appearances[s].rig].name
                                                  for s in subject_of_clip], cues, rendered)
    rated = rng.random(p.n_videos) < p.user_study_share
    study = syn.simulate_user_study(cues[rated], [v for v, r in zip(video_ids, rated) if r], rng,
                                    n_raters=p.n_raters, raters_per_video=p.raters_per_video)
    return manifest, study, cue_table, synthetic_tracks(video_ids, rendered, p.fps)


def synthetic_tracks(video_ids: list[str], rendered: list[dict], fps: float) -> pd.DataFrame:
    """Per rendered frame: video_id, frame_idx, t and each unit's strength (`unit_<name>`),
    the ground truth a front-end measurement can be checked against frame by frame."""
    from personality.synthetic import UNITS

    parts = []
    for vid, r in zip(video_ids, rendered):
        n = len(r["tracks"])
        parts.append(pd.DataFrame({"video_id": vid, "frame_idx": np.arange(n, dtype=np.int64),
                                   "t": np.arange(n) / fps,
                                   **{f"unit_{u}": r["tracks"][:, k] for k, u in enumerate(UNITS)}}))
    return pd.concat(parts, ignore_index=True) if parts else _empty("synthetic_tracks")


# --------------------------------------------------------------------------------------------------
# source: folder


def probe_video(path: Path) -> dict:
    """Duration, frame rate and audio presence of a media file, in this process
    (personality.probing.probe_facts; the stage itself reads files through a WorkerProbe)."""
    return probe_facts(path)


def read_labels_csv(csv_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Parse and validate a folder-source labels CSV. Returns the good rows and one message per bad
    row ("<csv> row N (<video>): <what is wrong>", N the file's line). Raises StageInputError if
    the file itself is unusable (missing, unparseable, no `video` column)."""
    header, records = datasets_au.labels_records(csv_path)
    missing = [c for c in ("video", *TRAITS) if c not in header]
    if missing:
        raise StageInputError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                              "(need video, O, C, E, A, N; optional subject, split)"
                              + csv_tables.separator_hint(header))
    root = csv_path.parent.resolve()
    good, problems, seen = [], [], set()
    at = header.index("video")
    for line, fields in records:
        video = fields[at].strip() if at < len(fields) else ""
        where = f"{csv_path} row {line} ({video or 'no video'})"
        try:
            if len(fields) > len(header):  # a stray comma: which cell is which is unknown
                raise StageInputError(f"{len(fields)} fields, the header has {len(header)}")
            # a short row is padded, as pandas did: its trailing optional cells are empty
            row = dict(zip(header, [*fields, *[""] * (len(header) - len(fields))]))
            target = _video_target(root, video)
            if target in seen:
                raise StageInputError("duplicate video")
            # the per-row checks the openface_csv source makes too: all five labels or none
            values, split = datasets_au.row_labels(row), datasets_au.row_split(row)
        except StageInputError as exc:
            problems.append(f"{where}: {exc}")
            continue
        seen.add(target)
        good.append({"video": video, "abs_path": target, "subject": row.get("subject", "").strip(),
                     "split": split, "line": line, **values})
    return pd.DataFrame(good), problems


def _video_target(root: Path, video: str) -> Path:
    """The file a labels row names, resolved: StageInputError for an empty path, one that
    escapes `root` (symlinks followed), one the file system cannot take (a symlink loop, a NUL
    byte, a name too long) and a missing file."""
    if not video:
        raise StageInputError("empty video path")
    target = resolve_untrusted(root / datasets_au.listed_name(root, video), video)
    if target != root and root not in target.parents:
        raise StageInputError(f"path {video!r} escapes the dataset root {root}")
    try:
        found = target.is_file()
    except OSError as exc:  # e.g. a folder on the way that cannot be read
        raise StageInputError(f"video file {target}: {exc.strerror or exc}") from None
    if not found:
        raise StageInputError(f"video file {target} " + ("is a folder, not a file"
                                                          if target.is_dir() else "not found"))
    return target


def ingest_folder(p: FolderParams, assign: Callable[[list[str]], dict[str, str]], root: Path, *,
                  kfold: bool = False) -> tuple[pd.DataFrame, list[str]]:
    if not p.labels:
        raise StageInputError("ingest.folder.labels: set it to the labels CSV of your videos")
    csv_path = Path(p.labels) if Path(p.labels).is_absolute() else root / p.labels
    rows, problems = read_labels_csv(csv_path)
    with WorkerProbe() as probe:  # a file that crashes FFmpeg costs the worker, not the stage
        records = [record for row in progress(rows.to_dict("records"), desc="ingest:probe",
                                              unit="video")
                   if (record := _folder_record(row, probe, p, root, csv_path, problems))]
    datasets.check_unique_ids(records, str(csv_path))
    manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
    return finish_splits(manifest, assign, where=str(csv_path), kfold=kfold,
                         typed_ids=True), problems


def _folder_record(row: dict, probe: Callable, p: FolderParams, root: Path, csv_path: Path,
                   problems: list[str]) -> dict | None:
    """The manifest row of one labels CSV row, its video probed; None with the reason among
    `problems` when the video cannot be read."""
    try:
        facts = probe(row["abs_path"])
    except StageInputError as exc:
        problems.append(f"{csv_path} row {row['line']} ({row['video']}): {exc}")
        return None
    video_id = datasets.path_video_id(row["video"])
    try:
        path = row["abs_path"].relative_to(root).as_posix()
    except ValueError:
        path = str(row["abs_path"])
    return {"video_id": video_id, "label_scale": "unit", "path": path, "split": row["split"],
            "subject_id": row["subject"] or video_id, "dataset": p.dataset,
            **{t: row[t] for t in TRAITS}, **facts}


MANIFEST_COLUMNS = ["video_id", "path", "split", "subject_id", "dataset", *TRAITS, "duration_s",
                    "fps", "has_audio", "label_scale"]


def _empty(name: str) -> pd.DataFrame:
    kinds = {"int": "int64", "float": "float64", "bool": "bool", "str": "object",
             "bytes": "object", "list": "object"}
    return pd.DataFrame({c: pd.Series(dtype=kinds[k])
                         for c, k in schemas.ARTIFACTS[name].columns.items()})


def write_manifest(manifest: pd.DataFrame, root: Path) -> None:
    """data/manifest.parquet, and data/clips.parquet: the same videos without labels and splits,
    which the front-end stages read. A new split (a k-fold) or a corrected label then changes the
    manifest only, and DVC re-runs no front-end stage."""
    write_artifact("manifest", manifest, path=root / schemas.ARTIFACTS["manifest"].path)
    videos = (root / "data" / "videos").resolve()
    clips = manifest.assign(source_stat=[_source_stat(p, root, videos) for p in manifest["path"]])
    write_artifact("clips", clips[list(schemas.ARTIFACTS["clips"].columns)],
                   path=root / schemas.ARTIFACTS["clips"].path)


def _source_stat(path: str, root: Path, videos: Path) -> str:
    """'size:mtime_ns' of a video outside data/videos (a real dataset's, which DVC does not
    track): a replaced or re-encoded clip then changes data/clips.parquet, and the front-end
    stages that read it re-run. '' for data/videos (a DVC dependency of frames and audio
    itself, `videos` resolved), for no video (AU-only sources) and for a file that cannot be
    looked at."""
    if not path:
        return ""
    video = Path(path) if Path(path).is_absolute() else root / path
    try:
        if videos in video.resolve().parents:
            return ""
        st = os.stat(video)
    except (OSError, ValueError):
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclasses.dataclass
class Ingested:
    """What a source gave: the manifest and its side tables, and one message per bad item."""

    manifest: pd.DataFrame
    study: pd.DataFrame
    cue_table: pd.DataFrame
    source_aus: pd.DataFrame
    problems: list[str]
    tracks: pd.DataFrame | None = None  # synthetic only: per-frame rendered unit strengths


# sources whose rows arrive with their split (finish_splits keeps it): ingest.split_mode=kfold
# would give every fold the same split, so it is refused, pointing at the source's own setting
FIXED_SPLIT_SOURCES = {
    "chalearn16": "it decides its own split by YouTube id (ingest.chalearn16.split_mode: "
                  "official | kfold, with ingest.chalearn16.n_folds and ingest.chalearn16.fold: "
                  "for fold k set ingest.chalearn16.fold=k)",
    "udiva": "UDIVA's participants come with the official splits of ingest.udiva.splits "
             "(parts_*.csv per split); it has no k-fold",
}


def check_split_mode(params: IngestParams) -> None:
    """StageInputError, before any work, for ingest.split_mode=kfold on a source whose rows
    carry a fixed split: the folds would all be one split, silently (make cv's experiments)."""
    if params.split_mode == "kfold" and params.source in FIXED_SPLIT_SOURCES:
        raise StageInputError(f"ingest.split_mode=kfold does not apply to source "
                              f"{params.source}: {FIXED_SPLIT_SOURCES[params.source]}; keep "
                              "ingest.split_mode: shares")


def read_source(params: IngestParams, base: BaseParams, root: Path) -> Ingested:
    """Run the adapter of `params.source`; rows of every source get the same split rule."""
    check_split_mode(params)
    assign = subject_splitter(params, base.seed)
    empty = {name: _empty(name) for name in ("user_study", "synthetic_cues", "source_aus",
                                             "synthetic_tracks")}
    if params.source == "synthetic":
        manifest, study, cues, tracks = ingest_synthetic(
            params.synthetic, assign, base.seed, base.workers, root, tuple(params.required_splits))
        return Ingested(manifest, study, cues, empty["source_aus"], [], tracks)
    if params.source == "folder":
        manifest, problems = ingest_folder(params.folder, assign, root,
                                           kfold=params.split_mode == "kfold")
        return Ingested(manifest, empty["user_study"], empty["synthetic_cues"],
                        empty["source_aus"], problems)
    study, source_aus = empty["user_study"], empty["source_aus"]
    if params.source == "chalearn16":
        with WorkerProbe() as probe:
            rows, problems = datasets.ingest_chalearn16(params.chalearn16, seed=base.seed,
                                                        root=root, probe=probe)
    elif params.source == "udiva":
        with WorkerProbe() as probe:
            rows, problems = datasets.ingest_udiva(params.udiva, root=root, probe=probe)
    elif params.source == "perfex":
        rows, problems, aus, rated = datasets_au.ingest_perfex(params.perfex, root=root)
        source_aus = aus if len(aus) else source_aus
        study = rated if rated is not None else study
    else:
        rows, problems, aus = datasets_au.ingest_openface_csv(params.openface_csv, root=root)
        source_aus = aus if aus is not None else source_aus
    if not rows:
        raise StageInputError(f"{params.source}: no usable video or sequence"
                              + ("".join(f"\n  {p}" for p in problems[:20])))
    datasets.check_unique_ids(rows, params.source)
    manifest = pd.DataFrame(rows)
    manifest["label_scale"] = "z" if params.source == "udiva" else "unit"
    manifest = finish_splits(manifest[MANIFEST_COLUMNS], assign, where=params.source,
                             kfold=params.split_mode == "kfold",
                             typed_ids=params.source == "openface_csv")
    return Ingested(manifest, study, empty["synthetic_cues"], source_aus, problems)


def check_ingested(got: Ingested, params: IngestParams) -> None:
    """Refuse, before anything is written, what the pipeline cannot use: bad items under
    `strict`, no video, a required split empty or of unlabelled clips only."""
    for msg in got.problems:
        log.warning("bad item: %s", msg)
    strict = params.strict or (params.source == "folder" and params.folder.strict)
    if got.problems and strict:
        raise StageInputError(f"{len(got.problems)} bad item(s) and strict is set:\n"
                              + "\n".join(got.problems))
    if got.manifest.empty:
        raise StageInputError("no usable video: " + ("; ".join(got.problems[:5]) or
                                                     f"the {params.source} source lists none "
                                                     "(a labels CSV with a header only?)"))
    check_subject_splits(got.manifest)
    check_required_splits(got.manifest, params.required_splits)


def _drop_unknown(got: Ingested) -> None:
    """Side-table rows of videos the manifest does not hold are dropped (user-study ones
    reported)."""
    ids = set(got.manifest["video_id"])
    if len(got.source_aus):
        got.source_aus = got.source_aus[got.source_aus["video_id"].isin(ids)]
    unknown = sorted(set(got.study["video_id"]) - ids) if len(got.study) else []
    if unknown:
        got.problems.append(f"user study: ratings of {len(unknown)} unknown clip(s), e.g. "
                            f"{unknown[0]}; dropped")
        got.study = got.study[got.study["video_id"].isin(ids)]


def run(params: IngestParams, base: BaseParams, root: Path | None = None) -> dict:
    """Ingest `params.source` under `root`; returns the summary written to metrics/ingest.json."""
    root = root or repo_root()
    got = read_source(params, base, root)
    check_ingested(got, params)
    _drop_unknown(got)
    manifest, study = got.manifest, got.study
    notes = subject_warnings(manifest, params.source) + few_subject_warnings(manifest)
    for note in notes:
        log.warning("%s", note)
    (root / "data" / "videos").mkdir(parents=True, exist_ok=True)  # a DVC output for every source
    write_manifest(manifest, root)
    write_artifact("user_study", study, path=root / schemas.ARTIFACTS["user_study"].path)
    write_artifact("synthetic_cues", got.cue_table,
                   path=root / schemas.ARTIFACTS["synthetic_cues"].path)
    write_artifact("synthetic_tracks", got.tracks if got.tracks is not None
                   else _empty("synthetic_tracks"),
                   path=root / schemas.ARTIFACTS["synthetic_tracks"].path)
    write_artifact("source_aus", got.source_aus,
                   path=root / schemas.ARTIFACTS["source_aus"].path)
    summary = {
        "source": params.source,
        "n_videos": int(len(manifest)),
        "n_subjects": int(manifest["subject_id"].nunique()),
        **{f"n_{s}": int((manifest["split"] == s).sum()) for s in SPLITS},
        "n_rated_videos": int(study["video_id"].nunique()),
        "n_ratings": int(len(study)),
        "hours": round(float(manifest["duration_s"].sum()) / 3600, 4),
        "n_bad_rows": len(got.problems),
        "bad_rows": got.problems,
        **({"warnings": notes} if notes else {}),
    }
    atomic_write_json(root / "metrics" / "ingest.json", summary)
    log.info("manifest: %d videos (%s), %d ratings", summary["n_videos"],
             ", ".join(f"{s} {summary[f'n_{s}']}" for s in SPLITS), summary["n_ratings"])
    return summary


def main(argv: list[str] | None = None) -> None:
    run_stage("ingest", IngestParams, run)


if __name__ == "__main__":
    main()
