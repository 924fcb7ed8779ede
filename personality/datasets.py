"""Source adapters for real datasets: ChaLearn First Impressions V2, UDIVA, PerFeX, OpenFace CSVs.

Each adapter reads a dataset in its official layout and returns manifest rows (the columns of
`schemas.ARTIFACTS["manifest"]`) plus the problems it found, one message per bad item, naming the
file. `stages/ingest.py` chooses one by `ingest.source` and writes the artifacts:

    python -m stages.ingest     # with ingest.source: chalearn16 | udiva | perfex | openface_csv

Untrusted files are data, not code: label pickles go through `RestrictedUnpickler` (dicts, lists,
strings and numbers only), and every path read from a label file must stay inside the dataset root.
The README's "Real datasets" section says where each dataset comes from and how to point at it.
"""
from __future__ import annotations

import dataclasses
import io
import math
import pickle
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from personality.common import StageInputError, get_logger, progress, safe_join
from personality.schemas import AU_INTENSITY, AU_PRESENCE, TRAITS

log = get_logger("datasets")

# --------------------------------------------------------------------------------------------------
# safe pickles


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle plain data only. Any global (a class, a function such as os.system) is refused:
    containers, strings and numbers need none, so a label pickle never has a reason to ask."""

    def __init__(self, file, *, source: str):
        super().__init__(file, encoding="latin1")  # Python 2 `str` arrives as latin-1 text
        self._source = source

    def find_class(self, module: str, name: str):
        raise StageInputError(f"{self._source}: refused to load: the pickle asks for "
                              f"{module}.{name}; only dicts, lists, strings and numbers are "
                              "accepted (is this file what it claims to be?)")


def load_data_pickle(path: Path) -> object:
    """Load a pickle of plain data (dict / list / tuple / str / bytes / int / float / bool / None)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StageInputError(f"{path}: cannot read: {exc}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=str(path)).load()
    except StageInputError:
        raise
    except Exception as exc:  # truncated / not a pickle / unsupported opcode
        raise StageInputError(f"{path}: not a readable pickle: {type(exc).__name__}: {exc}") \
            from None


# --------------------------------------------------------------------------------------------------
# ChaLearn First Impressions V2 (ChaLearn LAP 2016)

CHALEARN_TRAITS = {"openness": "O", "conscientiousness": "C", "extraversion": "E",
                   "agreeableness": "A", "neuroticism": "N"}
_CHALEARN_CLIP = re.compile(r"^(?P<youtube>.+)\.(?P<n>\d{3})\.mp4$")


@dataclasses.dataclass(frozen=True)
class ChaLearnParams:
    root: str = ""  # the folder holding the extracted split folders and the annotation pickles
    train_dir: str = "train"  # mp4s anywhere below (the nested zips extract to trainingXX/)
    val_dir: str = "validation"
    test_dir: str = "test"
    train_labels: str = "annotation_training.pkl"
    val_labels: str = "annotation_validation.pkl"
    test_labels: str = "annotation_test.pkl"
    split_mode: Literal["official", "kfold"] = "official"
    n_folds: int = 10
    fold: int = 0  # kfold: this fold is test, the next one val, the rest train


def path_video_id(relative: str) -> str:
    """A video id that is unique by construction: the path relative to the dataset's labels file,
    *with* its extension, every character outside [A-Za-z0-9._-] percent-escaped (reversible with
    urllib.parse.unquote). `a/b.mp4` -> `a%2Fb.mp4`, `a__b.mp4` -> `a__b.mp4`, `dup.MP4` ->
    `dup.MP4`: paths that differ give ids that differ."""
    from urllib.parse import quote

    return quote(Path(relative).as_posix(), safe="._-")


def check_unique_ids(rows: list[dict], where: str) -> None:
    """Two rows with one video_id are an error naming both files (they would be merged)."""
    first: dict[str, dict] = {}
    for row in rows:
        prior = first.setdefault(row["video_id"], row)
        if prior is not row:
            raise StageInputError(
                f"{where}: video_id {row['video_id']!r} names two inputs: "
                f"{prior.get('path') or prior.get('source', '?')} and "
                f"{row.get('path') or row.get('source', '?')}; rename one of them")


def chalearn_subject(filename: str) -> str:
    """The YouTube id: the name before the last `.NNN` (`J4GQm9j0JZ0.003.mp4` -> `J4GQm9j0JZ0`)."""
    m = _CHALEARN_CLIP.match(filename)
    return m.group("youtube") if m else Path(filename).stem


def read_chalearn_annotations(path: Path) -> dict[str, dict[str, float]]:
    """`{trait: {"<id>.mp4": value}}` -> `{"<id>.mp4": {"O": .., ..., "N": ..}}`, validated."""
    data = load_data_pickle(path)
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected a dict of traits, got {type(data).__name__}")
    keys = {str(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}
    missing = [t for t in CHALEARN_TRAITS if t not in keys]
    if missing:
        raise StageInputError(f"{path}: missing trait(s) {', '.join(missing)}; has "
                              f"{', '.join(sorted(keys))}")
    out: dict[str, dict[str, float]] = {}
    for trait, letter in CHALEARN_TRAITS.items():
        per_video = keys[trait]
        if not isinstance(per_video, dict):
            raise StageInputError(f"{path}: '{trait}' is a {type(per_video).__name__}, expected "
                                  "a dict of video -> score")
        for video, value in per_video.items():
            name = video.decode("latin1") if isinstance(video, bytes) else str(video)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise StageInputError(f"{path}: {trait}[{name}] = {value!r} is not a number")
            if not 0.0 <= float(value) <= 1.0:
                raise StageInputError(f"{path}: {trait}[{name}] = {value} is outside [0, 1]")
            out.setdefault(name, {})[letter] = float(value)
    return out


def kfold_splits(subjects: list[str], *, n_folds: int, fold: int, seed: int) -> dict[str, str]:
    """By-subject k-fold: fold `fold` is test, fold `fold + 1` val, the rest train."""
    if n_folds < 3 or not 0 <= fold < n_folds:
        raise StageInputError(f"kfold: need n_folds >= 3 and 0 <= fold < n_folds "
                              f"(got {n_folds}, {fold})")
    unique = sorted(set(subjects))
    order = np.random.default_rng([seed, 11]).permutation(len(unique))
    fold_of = {unique[i]: k % n_folds for k, i in enumerate(order)}
    return {s: "test" if f == fold else "val" if f == (fold + 1) % n_folds else "train"
            for s, f in fold_of.items()}


def ingest_chalearn16(p: ChaLearnParams, *, seed: int, root: Path, probe) -> tuple[list, list]:
    if not p.root:
        raise StageInputError("ingest.chalearn16.root: set it to the extracted dataset folder")
    base = _resolve(p.root, root)
    rows, problems = [], []
    splits = (("train", p.train_dir, p.train_labels), ("val", p.val_dir, p.val_labels),
              ("test", p.test_dir, p.test_labels))
    for split, folder, labels_name in splits:
        video_dir = safe_join(base, folder)
        labels_path = safe_join(base, labels_name)
        if not video_dir.is_dir() and not labels_path.exists():
            log.info("chalearn16: no %s split (%s, %s absent)", split, video_dir, labels_path)
            continue
        labels = read_chalearn_annotations(labels_path) if labels_path.exists() else {}
        if not labels_path.exists():
            problems.append(f"{labels_path}: annotation file not found; {split} videos unlabelled")
        videos = {v.name: v for v in sorted(video_dir.rglob("*.mp4"))} if video_dir.is_dir() else {}
        for name in sorted(set(labels) - set(videos)):
            problems.append(f"{labels_path}: label for {name} but no such video under {video_dir}")
        for name, path in progress(videos.items(), desc=f"chalearn16:{split}", unit="video"):
            if not _inside(base, path, problems):
                continue
            if name not in labels and labels_path.exists():
                problems.append(f"{path}: video has no label in {labels_path}")
                continue
            try:
                facts = probe(path)
            except StageInputError as exc:
                problems.append(str(exc))
                continue
            traits = labels.get(name, {})
            rows.append({"video_id": name[: -len(".mp4")], "path": _rel(path, root),
                         "split": split, "subject_id": chalearn_subject(name),
                         "dataset": "chalearn16",
                         **{t: traits.get(t, math.nan) for t in TRAITS}, **facts})
    if p.split_mode == "kfold" and rows:
        split_of = kfold_splits([r["subject_id"] for r in rows], n_folds=p.n_folds, fold=p.fold,
                                seed=seed)
        for r in rows:
            r["split"] = split_of[r["subject_id"]]
    return rows, problems


# --------------------------------------------------------------------------------------------------
# UDIVA v0.5

UDIVA_TRAITS = {"OPENMINDEDNESS_Z": "O", "CONSCIENTIOUSNESS_Z": "C", "EXTRAVERSION_Z": "E",
                "AGREEABLENESS_Z": "A", "NEGATIVEEMOTIONALITY_Z": "N"}
_UDIVA_RECORDING = re.compile(r"^FC(?P<part>[12])_(?P<task>[A-Z])$")


@dataclasses.dataclass(frozen=True)
class UdivaParams:
    root: str = ""
    # per split: the metadata CSVs and the folder of session folders, relative to root
    splits: dict = dataclasses.field(default_factory=lambda: {
        "train": {"parts": "metadata/parts_train.csv", "sessions": "metadata/sessions_train.csv",
                  "recordings": "recordings/train"},
        "val": {"parts": "metadata/parts_val.csv", "sessions": "metadata/sessions_val.csv",
                "recordings": "recordings/val"},
        "test": {"parts": "metadata/parts_test.csv", "sessions": "metadata/sessions_test.csv",
                 "recordings": "recordings/test"},
    })
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["T"])  # T alk, A nimals, L ego, G host


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise StageInputError(f"{path}: not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise StageInputError(f"{path}: not a readable CSV: {exc}") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StageInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def ingest_udiva(p: UdivaParams, *, root: Path, probe) -> tuple[list, list]:
    if not p.root:
        raise StageInputError("ingest.udiva.root: set it to the UDIVA folder")
    base = _resolve(p.root, root)
    rows, problems = [], []
    for split, spec in p.splits.items():
        if split not in ("train", "val", "test"):
            raise StageInputError(f"ingest.udiva.splits: unknown split {split!r}")
        parts_path = safe_join(base, spec["parts"])
        if not parts_path.exists():
            log.info("udiva: no %s split (%s absent)", split, parts_path)
            continue
        parts = _read_csv(parts_path, ["ID", *UDIVA_TRAITS])
        sessions_path = safe_join(base, spec["sessions"])
        sessions = _read_csv(sessions_path, ["ID", "PART.1", "PART.2"])
        labels: dict[str, dict[str, float]] = {}
        for i, row in parts.iterrows():
            try:
                labels[row["ID"].strip()] = {letter: float(row[col])
                                             for col, letter in UDIVA_TRAITS.items()}
            except ValueError:
                problems.append(f"{parts_path} row {i + 2} (participant {row['ID']}): "
                                "a trait z-score is not a number")
        rec_root = safe_join(base, spec["recordings"])
        for _, sess in sessions.iterrows():
            session = sess["ID"].strip()
            try:
                session_dir = safe_join(rec_root, session)
            except StageInputError as exc:  # a session ID that is no folder name
                problems.append(f"{sessions_path} (session {session!r}): {exc}")
                continue
            if not session_dir.is_dir():
                problems.append(f"{session_dir}: session folder of {session} not found")
                continue
            for path in sorted(session_dir.rglob("*.mp4")):
                m = _UDIVA_RECORDING.match(path.stem)
                if not m or m.group("task") not in p.tasks or not _inside(base, path, problems):
                    continue
                participant = sess[f"PART.{m.group('part')}"].strip()
                if participant not in labels:
                    problems.append(f"{path}: participant {participant} has no row in "
                                    f"{parts_path}")
                    continue
                try:
                    facts = probe(path)
                except StageInputError as exc:
                    problems.append(str(exc))
                    continue
                rows.append({"video_id": f"{session}_{path.stem}", "path": _rel(path, root),
                             "split": split, "subject_id": participant, "dataset": "udiva",
                             **labels[participant], **facts})
    return rows, problems


# --------------------------------------------------------------------------------------------------
# PerFeX long CSV and OpenFace CSVs: AU sequences, no video

PERFEX_TRAITS = {"openness": "O", "conscientiousness": "C", "extroversion": "E",
                 "agreeableness": "A", "neuroticism": "N"}


@dataclasses.dataclass(frozen=True)
class PerfexParams:
    csv: str = ""  # PerFeX's long CSV: one row per frame
    retrain_csv: str = ""  # optional: user-study ratings -> data/user_study.parquet
    fps: float = 30.0  # OpenFace frame rate of the source videos: t = frame / fps
    id_column: str = "ID"


def _au_frame_table(video_id: str, values: pd.DataFrame, fps: float,
                    success: np.ndarray | None = None,
                    confidence: np.ndarray | None = None,
                    t: np.ndarray | None = None) -> pd.DataFrame:
    """Rows of the `aus` artifact for one sequence. `values` holds AUxx_r (and maybe AUxx_c)."""
    n = len(values)
    ok = np.ones(n, bool) if success is None else success.astype(bool)
    table = {"video_id": [video_id] * n, "frame_idx": np.arange(n, dtype=np.int64),
             "t": (np.arange(n) / fps if t is None else t).astype(np.float64),
             "success": ok,
             "confidence": (np.ones(n) if confidence is None else confidence).astype(np.float64)}
    for au in AU_INTENSITY:
        col = values[au].to_numpy(np.float64) if au in values else np.full(n, np.nan)
        table[au] = np.where(ok, col, np.nan)  # zeros on failed frames are not measurements
    for au in AU_PRESENCE:
        col = values[au].to_numpy(np.float64) if au in values else np.full(n, np.nan)
        table[au] = np.where(ok, col, np.nan)
    return pd.DataFrame(table)


def ingest_perfex(p: PerfexParams, *, root: Path) -> tuple[list, list, pd.DataFrame, pd.DataFrame]:
    """Manifest rows, problems, the `aus` table and the user-study table from PerFeX's CSVs."""
    if not p.csv:
        raise StageInputError("ingest.perfex.csv: set it to PerFeX's long CSV")
    path = _resolve(p.csv, root)
    df = _read_csv(path, [p.id_column, "File", *PERFEX_TRAITS])
    au_cols = [c for c in df.columns if re.fullmatch(r"AU\d\d_[rc]", c)]
    missing_aus = [a for a in AU_INTENSITY if a not in au_cols]
    if missing_aus:
        raise StageInputError(f"{path}: missing AU column(s) {', '.join(missing_aus)}")
    rows, problems, tables = [], [], []
    for seq_id, group in df.groupby(p.id_column, sort=True):
        where = f"{path} (ID {seq_id})"
        try:
            values = group[au_cols].apply(pd.to_numeric, errors="raise")
            traits = group[list(PERFEX_TRAITS)].apply(pd.to_numeric, errors="raise")
        except ValueError as exc:
            problems.append(f"{where}: non-numeric value: {exc}")
            continue
        if traits.nunique().max() > 1:
            problems.append(f"{where}: trait values differ between frames of one sequence")
            continue
        first = traits.iloc[0]
        if ((first < 0) | (first > 1)).any():
            problems.append(f"{where}: a trait is outside [0, 1]")
            continue
        video_id = f"perfex_{seq_id}"
        file = str(group["File"].iloc[0])
        tables.append(_au_frame_table(video_id, values.reset_index(drop=True), p.fps))
        rows.append({"video_id": video_id, "path": "", "split": "",
                     "subject_id": chalearn_subject(Path(file).name), "dataset": "perfex",
                     **{letter: float(first[col]) for col, letter in PERFEX_TRAITS.items()},
                     "duration_s": len(group) / p.fps, "fps": p.fps, "has_audio": False})
    aus = pd.concat(tables, ignore_index=True) if tables else _au_frame_table("", pd.DataFrame(),
                                                                              p.fps).iloc[:0]
    study = read_perfex_ratings(_resolve(p.retrain_csv, root), p.id_column) if p.retrain_csv \
        else None
    return rows, problems, aus, study


def read_perfex_ratings(path: Path, id_column: str = "ID") -> pd.DataFrame:
    """PerFeX's retraining CSV -> user-study rows. Columns: the id, an optional `rater` /
    `rater_id`, and the five PerFeX trait columns, either Likert 1-5 or in [0, 1] (mapped to
    1 + 4p). One row per rating."""
    df = _read_csv(path, [id_column, *PERFEX_TRAITS])
    rater_col = next((c for c in ("rater_id", "rater", "Rater") if c in df.columns), None)
    values = df[list(PERFEX_TRAITS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any():
        bad = int(values.isna().any(axis=1).to_numpy().argmax())
        raise StageInputError(f"{path} row {bad + 2}: a rating is missing or not a number")
    if values.to_numpy().max() <= 1.0:
        values = 1 + 4 * values
    if ((values < 1) | (values > 5)).any().any():
        raise StageInputError(f"{path}: ratings must be Likert 1-5 or in [0, 1]")
    return pd.DataFrame({
        "video_id": "perfex_" + df[id_column].astype(str),
        "rater_id": df[rater_col].astype(str) if rater_col else [f"r{i}" for i in range(len(df))],
        **{letter: values[col].astype(float) for col, letter in PERFEX_TRAITS.items()}})


@dataclasses.dataclass(frozen=True)
class OpenFaceParams:
    labels: str = ""  # CSV: file (OpenFace CSV relative to this CSV), O, C, E, A, N [, subject, split]
    fps: float = 30.0  # used only where a CSV lacks `timestamp`


def read_openface_csv(path: Path, *, fps: float = 30.0) -> tuple[pd.DataFrame, dict]:
    """One OpenFace FeatureExtraction CSV -> its `aus` rows (personality.openface, the `aus` stage's own reader) and
    facts: number of faces in the file, duration, frame rate."""
    from personality.openface import read_openface_csv as read_aus_csv

    table = read_aus_csv(path, video_id="")
    try:
        n_faces = int(pd.read_csv(path, skipinitialspace=True, usecols=lambda c: c.strip() ==
                                  "face_id").iloc[:, 0].nunique())
    except (ValueError, IndexError):
        n_faces = 1
    t = table["t"].to_numpy(float)
    rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else fps
    return table, {"n_faces": max(n_faces, 1), "duration_s": len(t) / rate if len(t) else 0.0,
                   "fps": rate}


def ingest_openface_csv(p: OpenFaceParams, *, root: Path) -> tuple[list, list, pd.DataFrame]:
    if not p.labels:
        raise StageInputError("ingest.openface_csv.labels: set it to the labels CSV")
    labels_path = _resolve(p.labels, root)
    df = _read_csv(labels_path, ["file", *TRAITS])
    base = labels_path.parent
    rows, problems, tables = [], [], []
    for i, row in df.iterrows():
        where = f"{labels_path} row {i + 2} ({row['file']})"
        try:
            path = safe_join(base, row["file"].strip())
            traits = {}
            for t in TRAITS:
                text = row[t].strip()
                value = float(text) if text else math.nan
                if not math.isnan(value) and not 0 <= value <= 1:
                    raise StageInputError(f"label {t}={text} is outside [0, 1]")
                traits[t] = value
            if not path.is_file():
                raise StageInputError(f"OpenFace CSV {path} not found")
            table, facts = read_openface_csv(path, fps=p.fps)
        except ValueError as exc:  # StageInputError included; float('abc') too
            problems.append(f"{where}: {exc}")
            continue
        except OSError as exc:  # the CSV found but not readable: this row only
            problems.append(f"{where}: {exc.strerror or exc}")
            continue
        video_id = path_video_id(row["file"].strip())
        table["video_id"] = video_id
        tables.append(table)
        rows.append({"video_id": video_id, "path": "", "source": str(path),  # AUs: source_aus
                     "split": row.get("split", "").strip(),
                     "subject_id": row.get("subject", "").strip() or video_id,
                     "dataset": "openface_csv", **traits,
                     "duration_s": facts["duration_s"], "fps": facts["fps"], "has_audio": False})
    aus = pd.concat(tables, ignore_index=True) if tables else None
    return rows, problems, aus


# --------------------------------------------------------------------------------------------------


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _inside(base: Path, path: Path, problems: list[str]) -> bool:
    """Whether a file found under the dataset folder stays in it once symlinks are followed (the
    folder source's rule, `safe_join`); a file that escapes, or cannot be resolved, is reported
    in `problems` by name and skipped."""
    try:
        safe_join(base, path)
    except StageInputError as exc:
        problems.append(str(exc))  # "<file>: path escapes the dataset root <base>"
        return False
    return True


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
