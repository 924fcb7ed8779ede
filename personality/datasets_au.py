"""Source adapters for the datasets that arrive as AU sequences, not video: PerFeX's long CSV (and
its user-study ratings) and a folder of OpenFace FeatureExtraction CSVs with a labels CSV; and the
reading and per-row checks of a labels CSV (labels_records, row_labels, row_split), which the
`folder` source (stages/ingest.py) shares, and iter_labels_records (the inputs stage's).

Split out of personality/datasets.py (the video sources, ChaLearn and UDIVA, and the helpers
used here; the CSV reading is personality/csv_tables.py); import these names from this module. Like the video adapters, each returns manifest rows plus one
message per bad row naming the file and the row; one bad row never stops the others. The
sequences go to `data/source_aus/`, which the `aus` stage passes through.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from personality import datasets
from personality.common import StageInputError, get_logger, safe_join
from personality.csv_tables import (check_table_file, columns_any_case, csv_records, read_table,
                                    repeated_columns)
from personality.schemas import AU_INTENSITY, AU_PRESENCE, SPLITS, TRAITS

log = get_logger("ingest")

# --------------------------------------------------------------------------------------------------
# labels CSV rows (folder and openface_csv sources)


# the columns of a labels CSV (folder: video, openface_csv: file), read in any case
LABELS_COLUMNS = ("video", "file", *TRAITS, "subject", "split")


def labels_records(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (stripped; LABELS_COLUMNS in any case spelled our way: `Subject` is `subject`)
    and the (line, fields) records of a labels CSV, blank lines left
    out. The csv module, not pandas: pandas rejects the whole file for one row with an extra
    field (C engine), or silently cuts the extra field of the first row and swallows the rest
    of a file after an unclosed quote (python engine); here such a row stays one record for
    the caller to report, and an unclosed quote fails the file. StageInputError naming the
    file when it is missing, not text (binary, not UTF-8), or has no header or a repeated column.
    The whole file is read before its header is judged, so a file with two faults names the
    same one every time (iter_labels_records reads one record at a time)."""
    check_table_file(csv_path, "labels CSV not found")
    records = list(_labels_lines(csv_path))
    if not records:
        raise StageInputError(f"{csv_path}: not a readable CSV: no header line")
    return _labels_header(csv_path, records[0][1]), records[1:]


def iter_labels_records(csv_path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """labels_records' header and its records one at a time, for a reader that keeps a cell or
    two of each row (the inputs stage): the list of every record took 0.76 GB a million rows of
    8 cells (6.1 GB for a labels CSV of 10 million rows), one record at a time nothing. The same
    errors, the header's here and the records' while iterating (of a file with two faults, the
    one met first)."""
    check_table_file(csv_path, "labels CSV not found")
    records = _labels_lines(csv_path)
    first = next(records, None)
    if first is None:
        raise StageInputError(f"{csv_path}: not a readable CSV: no header line")
    return _labels_header(csv_path, first[1]), records


def _labels_lines(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """The (line, fields) records of a labels CSV that are not blank: an unclosed quote fails
    the file (strict)."""
    return ((n, f) for n, f, _ in csv_records(csv_path, strict=True)
            if len(f) > 1 or (f and f[0].strip()))


def _labels_header(csv_path: Path, fields: list[str]) -> list[str]:
    """A labels CSV's header, stripped and LABELS_COLUMNS spelled our way; StageInputError for a
    column given twice."""
    header = columns_any_case([c.strip() for c in fields], LABELS_COLUMNS)
    repeated = repeated_columns(header)  # "" left out: trailing commas
    if repeated:
        raise StageInputError(f"{csv_path}: column(s) {', '.join(repeated)} given twice")
    return header


def row_labels(row) -> dict[str, float]:
    """The five labels of a labels-CSV row: all five numbers in [0, 1], or all five empty (an
    unlabelled video: NaN, kept for deploy / predict). StageInputError saying what is wrong
    otherwise: some given and some empty, not a number, `nan` or outside [0, 1]."""
    given = [t for t in TRAITS if row[t].strip()]
    if given and len(given) < len(TRAITS):
        raise StageInputError(f"labels {', '.join(given)} given but "
                              f"{', '.join(t for t in TRAITS if t not in given)} empty: "
                              "give all five, or none for an unlabelled video")
    values = {}
    for t in TRAITS:
        text = row[t].strip()
        if text == "":
            values[t] = math.nan
            continue
        try:
            value = float(text)
        except ValueError:
            raise StageInputError(f"label {t}={text!r} is not a number") from None
        if not 0.0 <= value <= 1.0:  # NaN fails this too: `nan` is no label
            raise StageInputError(f"label {t}={text} is outside [0, 1]")
        values[t] = value
    return values


def row_split(row) -> str:
    """A labels-CSV row's `split` cell: train / val / test in any case (`validation` is val), or
    '' when absent or empty (ingest assigns one by subject). StageInputError for anything else:
    an unknown split passed through would be dropped by every filter on "train"."""
    split = row.get("split", "").strip().lower()
    split = {"validation": "val"}.get(split, split)
    if split and split not in SPLITS:
        raise StageInputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return split


def listed_name(folder: Path, name: str) -> str:
    """The name of the file that a labels-CSV cell means, relative to `folder`: `name` itself
    when that exists, else the one written on Windows (`clips\\a.mp4`: a backslash is a folder)
    or in the other Unicode form (`café.mp4` as typed is composed, a file copied from a Mac has
    it decomposed) when that exists, else one of these with its extension in another case
    (`a.mp4` for a file `a.MP4`: a CSV written where the file system ignores case); `name` when
    none does (the caller reports it missing). All named the file of every row "not found" while
    the path shown was the file's own. Two files that differ only in the extension's case and
    neither spelled as the cell is (`a.MP4`, `a.Mp4` for `a.mp4`) are a StageInputError naming
    both: which one is meant is unknown."""
    if os.path.lexists(folder / name):
        return name
    slashed = name.replace("\\", "/")
    alts = dict.fromkeys((slashed, *(unicodedata.normalize(form, slashed) for form in ("NFC",
                                                                                     "NFD"))))
    for alt in alts:
        if alt != name and os.path.lexists(folder / alt):
            return alt
    for alt in alts:
        found = _extension_cases(folder, alt)
        if len(found) > 1:
            raise StageInputError(f"{name} is not there, but {folder / found[0]} and "
                                  f"{folder / found[1]} are: they differ from it only in the case "
                                  "of the extension, so which one is meant is unknown; rename one")
        if found:
            return found[0]
    return name


def _extension_cases(folder: Path, name: str) -> list[str]:
    """The spellings of `name` with its extension in another case that exist below `folder`
    (`a.MP4`, `a.Mp4` for `a.mp4`): each spelling is looked up, no folder is listed (a folder of
    10,000 clips per row). Extensions of up to 5 characters: 2**5 spellings at most."""
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem) or "/" in ext or len(ext) > 5:
        return []
    spellings = {"".join(c) for c in itertools.product(*((ch.lower(), ch.upper()) for ch in ext))}
    names = (f"{stem}.{e}" for e in sorted(spellings - {ext}))
    return [n for n in names if os.path.lexists(folder / n)]


# --------------------------------------------------------------------------------------------------
# PerFeX long CSV and user-study ratings

PERFEX_TRAITS = {"openness": "O", "conscientiousness": "C", "extroversion": "E",
                 "agreeableness": "A", "neuroticism": "N"}
# ChaLearn's clip name, which PerFeX's `File` holds: <YouTube id>.NNN.mp4
_CLIP_NAME = re.compile(r"^.+\.\d{3}\.mp4$")


@dataclasses.dataclass(frozen=True)
class PerfexParams:
    csv: str = ""  # PerFeX's long CSV: one row per frame
    retrain_csv: str = ""  # optional: user-study ratings -> data/user_study.parquet
    fps: float = 30.0  # OpenFace frame rate of the source videos: t = frame / fps
    id_column: str = "ID"
    # retrain_csv's scale: likert (1-5), unit ([0, 1], mapped to 1 + 4p), or auto: unit only
    # when some rating is not a whole number (a file of whole numbers is Likert, even all 1s)
    rating_scale: Literal["auto", "likert", "unit"] = "auto"


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


def perfex_clip(file: str) -> str:
    """The ChaLearn clip name of a PerFeX `File` cell. The CSV may hold a Windows path, which
    POSIX reads as one name, and `.MP4`: the base name is taken after either separator and the
    extension's case set aside. A name that is not `<id>.NNN.mp4` is a StageInputError: a
    made-up subject would put one speaker into several splits."""
    name = datasets.clip_key(re.split(r"[\\/]", file.strip())[-1])
    if not _CLIP_NAME.match(name):
        raise StageInputError(f"File {file!r} is not a ChaLearn clip name <YouTube id>.NNN.mp4: "
                              "its subject (the YouTube id) is unknown")
    return name


def perfex_subject(file: str) -> str:
    """The YouTube id of a PerFeX `File` cell (perfex_clip's rules)."""
    return datasets.chalearn_subject(perfex_clip(file))


def _perfex_sequence(group: pd.DataFrame, au_cols: list[str]
                     ) -> tuple[pd.DataFrame, dict[str, float], str]:
    """AU values, labels and subject of one PerFeX sequence (its frame rows); StageInputError
    saying what is wrong."""
    try:
        values = group[au_cols].apply(pd.to_numeric, errors="raise")
        traits = group[list(PERFEX_TRAITS)].apply(pd.to_numeric, errors="raise")
    except ValueError as exc:
        raise StageInputError(f"non-numeric value: {exc}") from None
    empty = [col for col in PERFEX_TRAITS if traits[col].isna().any()]
    if empty:  # an empty cell or `nan` parses as NaN: no label, not a label of NaN
        raise StageInputError(f"trait(s) {', '.join(empty)} empty or nan")
    if traits.nunique().max() > 1:
        raise StageInputError("trait values differ between frames of one sequence")
    first = traits.iloc[0]
    if ((first < 0) | (first > 1)).any():
        raise StageInputError("a trait is outside [0, 1]")
    subject = perfex_subject(str(group["File"].iloc[0]))
    return (values.reset_index(drop=True),
            {letter: float(first[col]) for col, letter in PERFEX_TRAITS.items()}, subject)


def ingest_perfex(p: PerfexParams, *, root: Path) -> tuple[list, list, pd.DataFrame, pd.DataFrame]:
    """Manifest rows, problems, the `aus` table and the user-study table from PerFeX's CSVs."""
    if not p.csv:
        raise StageInputError("ingest.perfex.csv: set it to PerFeX's long CSV")
    path = datasets._resolve(p.csv, root)
    df = read_table(path, [p.id_column, "File", *PERFEX_TRAITS])
    au_cols = [c for c in df.columns if re.fullmatch(r"AU\d\d_[rc]", c)]
    missing_aus = [a for a in AU_INTENSITY if a not in au_cols]
    if missing_aus:
        raise StageInputError(f"{path}: missing AU column(s) {', '.join(missing_aus)}")
    rows, problems, tables, clips = [], [], [], {}
    for seq_id, group in df.groupby(p.id_column, sort=True):
        try:
            values, labels, subject = _perfex_sequence(group, au_cols)
        except StageInputError as exc:
            problems.append(f"{path} (ID {seq_id}, row {group.index[0]}): {exc}")
            continue
        video_id = f"perfex_{seq_id}"
        clips.setdefault(perfex_clip(str(group["File"].iloc[0])), video_id)
        tables.append(_au_frame_table(video_id, values, p.fps))
        rows.append(_perfex_row(video_id, subject, labels, len(group), p.fps))
    study = None
    if p.retrain_csv:
        study_path = datasets._resolve(p.retrain_csv, root)
        if is_perfex_sequences(study_path):  # PerFeX's own retrain_final.csv: per frame
            study, extra_rows, extra_tables = read_perfex_study(study_path, p, clips, problems)
            rows, tables = rows + extra_rows, tables + extra_tables
        else:  # one row per rating
            study = read_perfex_ratings(study_path, p.id_column, scale=p.rating_scale,
                                        problems=problems)
    aus = pd.concat(tables, ignore_index=True) if tables else _au_frame_table("", pd.DataFrame(),
                                                                              p.fps).iloc[:0]
    return rows, problems, aus, study


def _perfex_row(video_id: str, subject: str, labels: dict[str, float], n_frames: int,
                fps: float) -> dict:
    """A manifest row of an AU sequence (no video): its split is decided with the others'."""
    return {"video_id": video_id, "path": "", "split": "", "subject_id": subject,
            "dataset": "perfex", **labels, "duration_s": n_frames / fps, "fps": fps,
            "has_audio": False}


def is_perfex_sequences(path: Path) -> bool:
    """Whether a retraining CSV is in PerFeX's own per-frame layout (`File` and the AUxx_r
    columns, as attn_retrain.py reads retrain_final.csv) rather than one row per rating. Its
    header (the first record that is not blank) through csv_records, within its size limits:
    pandas' header took 3.1 s and 1.5 GB for a header cell of 200 MB."""
    try:
        header = next((fields for _, fields, text in csv_records(path)
                       if text.strip(" \t\r\n")), [])
    except (OSError, StageInputError):
        return False  # read_perfex_ratings says what is wrong with the file
    names = {str(c).strip() for c in header}
    return "File" in names and set(AU_INTENSITY) <= names


def read_perfex_study(path: Path, p: PerfexParams, clips: dict[str, str], problems: list[str]
                      ) -> tuple[pd.DataFrame, list[dict], list[pd.DataFrame]]:
    """PerFeX's retraining file (per frame: ID, File, AUxx_r, the five traits in [0, 1], constant
    over a sequence: the user study's score of that clip) -> user-study rows (one per clip,
    rater `study`, Likert 1 + 4p), plus manifest rows and AU tables for the clips the long CSV
    lacks. Clips are matched by `File`, never by ID (the two files number their sequences
    independently); a clip already in the long CSV keeps its AUs and labels there, and its study
    score goes to that sequence. A rated clip new to the long CSV becomes a sequence of its own,
    unlabelled (NaN: the original annotators never scored it), split with its subject."""
    if p.rating_scale == "likert":
        raise StageInputError(f"{path}: PerFeX's per-frame retraining file holds traits in [0, 1];"
                              " ingest.perfex.rating_scale: likert does not fit it (use auto)")
    df = read_table(path, [p.id_column, "File", *PERFEX_TRAITS])
    au_cols = [c for c in df.columns if re.fullmatch(r"AU\d\d_[rc]", c)]
    study, rows, tables, first_id = [], [], [], {}
    for seq_id, group in df.groupby(p.id_column, sort=True):
        where = f"{path} (ID {seq_id}, row {group.index[0]})"  # the sequence's first line
        try:
            values, labels, subject = _perfex_sequence(group, au_cols)
            clip = perfex_clip(str(group["File"].iloc[0]))
        except StageInputError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if clip in first_id:
            problems.append(f"{where}: {clip} is rated again (first under ID {first_id[clip]}); "
                            "dropped")
            continue
        first_id[clip] = seq_id
        video_id = clips.get(clip) or f"perfex_study_{seq_id}"
        if clip not in clips:
            tables.append(_au_frame_table(video_id, values, p.fps))
            rows.append(_perfex_row(video_id, subject, {t: np.nan for t in TRAITS}, len(group),
                                    p.fps))
        study.append({"video_id": video_id, "rater_id": "study",
                      **{t: 1 + 4 * v for t, v in labels.items()}})
    log.info("perfex: %d rated clip(s) in %s, %d of them in %s too", len(study), path.name,
             len(study) - len(rows), p.csv)
    return (pd.DataFrame(study, columns=["video_id", "rater_id", *TRAITS]), rows, tables)


def read_perfex_ratings(path: Path, id_column: str = "ID", *, scale: str = "auto",
                        problems: list[str] | None = None) -> pd.DataFrame:
    """PerFeX's retraining CSV -> user-study rows (Likert 1-5). Columns: the id, an optional
    `rater` / `rater_id`, and the five PerFeX trait columns on `scale` (PerfexParams.rating_scale).
    A row with a rating missing, not a number or off the scale is reported in `problems` and
    dropped; without `problems` it is a StageInputError. One row per rating."""
    df = read_table(path, [id_column, *PERFEX_TRAITS])
    rater_col = next((c for c in ("rater_id", "rater", "Rater") if c in df.columns), None)
    values = df[list(PERFEX_TRAITS)].apply(pd.to_numeric, errors="coerce")
    given = values.notna().all(axis=1).to_numpy()
    unit = scale == "unit" or (scale == "auto" and _fractional(values[given].to_numpy(float)))
    if unit:
        values = 1 + 4 * values
    bad = {}
    for i in np.flatnonzero(~given):
        missing = [c for c in PERFEX_TRAITS if pd.isna(values[c].iloc[i])]
        bad[i] = f"rating(s) {', '.join(missing)} missing or not a number"
    for i in np.flatnonzero(given & ((values < 1) | (values > 5)).any(axis=1).to_numpy()):
        bad[i] = ("a rating is outside [0, 1]" if unit else "a rating is outside Likert 1-5 (set "
                  "ingest.perfex.rating_scale: unit if the file holds [0, 1] scores)")
    messages = [f"{path} row {df.index[i]} ({id_column} {df[id_column].iloc[i]}): {why}"
                for i, why in sorted(bad.items())]
    if messages and problems is None:
        raise StageInputError(messages[0])
    if messages:
        problems.extend(messages)
    keep = np.array([i not in bad for i in range(len(df))], bool)
    df, values = df[keep], values[keep]
    return pd.DataFrame({
        "video_id": "perfex_" + df[id_column].astype(str),
        "rater_id": df[rater_col].astype(str) if rater_col else [f"r{i}" for i in
                                                                  np.flatnonzero(keep)],
        **{letter: values[col].astype(float) for col, letter in PERFEX_TRAITS.items()}
    }).reset_index(drop=True)


def _fractional(values: np.ndarray) -> bool:
    """Whether some rating is not a whole number: then the file is on [0, 1] (auto scale)."""
    return bool(values.size) and not np.array_equal(values, np.round(values))


# --------------------------------------------------------------------------------------------------
# OpenFace CSVs + a labels CSV


@dataclasses.dataclass(frozen=True)
class OpenFaceParams:
    labels: str = ""  # CSV: file (OpenFace CSV relative to this CSV), O, C, E, A, N [, subject, split]
    fps: float = 30.0  # used only where a CSV lacks `timestamp`


def read_openface_csv(path: Path, *, fps: float = 30.0) -> tuple[pd.DataFrame, dict]:
    """One OpenFace FeatureExtraction CSV -> its `aus` rows (personality.openface, the `aus` stage's own reader) and
    facts: number of faces in the file, duration, frame rate. One read of the file: the faces
    are counted from the reader's own parse."""
    from personality.openface import read_openface_faces

    table, n_faces = read_openface_faces(path, video_id="")
    t = table["t"].to_numpy(float)
    rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else fps
    return table, {"n_faces": max(n_faces, 1), "duration_s": len(t) / rate if len(t) else 0.0,
                   "fps": rate}


def _openface_row(row: pd.Series, base: Path, seen: dict[Path, int], fps: float
                  ) -> tuple[Path, dict, pd.DataFrame]:
    """One labels row -> (the resolved file, its manifest row, its `aus` rows). StageInputError
    (a ValueError) or OSError saying what is wrong; `seen` maps the files of earlier good rows to
    their row numbers, so one file under two spellings (a.csv, x/../a.csv) is one sequence."""
    file = row["file"].strip()
    path = safe_join(base, listed_name(base, file))
    if path in seen:
        raise StageInputError(f"duplicate: {path} is the file of row {seen[path]} already")
    traits, split = row_labels(row), row_split(row)
    if not path.is_file():
        raise StageInputError(f"OpenFace CSV {path} not found")
    table, facts = read_openface_csv(path, fps=fps)
    video_id = datasets.path_video_id(file)
    table["video_id"] = video_id
    return path, {"video_id": video_id, "path": "", "source": str(path),  # AUs: source_aus
                  "split": split, "subject_id": row.get("subject", "").strip() or video_id,
                  "dataset": "openface_csv", **traits, "duration_s": facts["duration_s"],
                  "fps": facts["fps"], "has_audio": False}, table


def ingest_openface_csv(p: OpenFaceParams, *, root: Path) -> tuple[list, list, pd.DataFrame]:
    if not p.labels:
        raise StageInputError("ingest.openface_csv.labels: set it to the labels CSV")
    labels_path = datasets._resolve(p.labels, root)
    df = read_table(labels_path, ["file", *TRAITS], any_case=LABELS_COLUMNS)
    rows, problems, tables, seen = [], [], [], {}
    for i, row in df.iterrows():
        where = f"{labels_path} row {i} ({row['file']})"  # i: the file's line
        try:
            path, record, table = _openface_row(row, labels_path.parent, seen, p.fps)
        except ValueError as exc:  # StageInputError included
            problems.append(f"{where}: {exc}")
            continue
        except OSError as exc:  # the CSV found but not readable: this row only
            problems.append(f"{where}: {exc.strerror or exc}")
            continue
        seen[path] = i
        tables.append(table)
        rows.append(record)
    aus = pd.concat(tables, ignore_index=True) if tables else None
    return rows, problems, aus
