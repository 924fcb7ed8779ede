"""Reader of OpenFace FeatureExtraction CSVs: one file -> rows of the `aus` artifact schema.

    from personality.openface import read_openface_csv, read_openface_faces
    table = read_openface_csv("clip.csv", video_id="clip")   # (n_frames, 5 + 17 + 18) columns
    table, n_faces = read_openface_faces("clip.csv", video_id="clip")  # + faces in the file

Shared by the aus stage (`aus.backend: openface_csv`), the `openface_csv` ingest adapter
(personality/datasets_au.py, through read_openface_faces) and deploy (an OpenFace CSV corpus),
so all three read a CSV the same way.
The file's size limits (columns, a cell, a row) and the line numbers in messages are
personality/csv_tables.py's, as for every other CSV of the project.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from personality.common import MAX_COLUMNS, StageInputError, check_width  # noqa: F401
from personality.csv_tables import check_cells, row_lines
from personality.schemas import AU_INTENSITY, AU_PRESENCE


def read_openface_csv(path: str | Path, *, video_id: str, face_id: int = -1,
                      presence_threshold: float = 1.0) -> pd.DataFrame:
    """One OpenFace FeatureExtraction CSV -> rows of the aus schema.

    Headers with or without a space after the commas; the 2.0 layouts with or without `face_id`;
    `frame` is 1-based there, frame_idx 0-based here. Rows with success == 0 keep their place with
    NaN AUs. With several faces, `face_id` (or, when -1, the face with most successful frames) is
    kept. A missing AUxx_c column is derived as AUxx_r >= presence_threshold."""
    return read_openface_faces(path, video_id=video_id, face_id=face_id,
                               presence_threshold=presence_threshold)[0]


def read_openface_faces(path: str | Path, *, video_id: str, face_id: int = -1,
                        presence_threshold: float = 1.0) -> tuple[pd.DataFrame, int]:
    """read_openface_csv's rows and the number of faces in the whole file (the distinct
    `face_id` values, 0 when they are all empty; 1 without the column), from the one parse: the
    openface_csv source counted them in a second pandas read of the file, which tokenised every
    cell again (a 714-column CSV: 42 ms a file for 300 frames, 34 ms in one read; 9000 frames:
    0.46 s, 0.32 s)."""
    path = Path(path)
    try:
        # OpenFace's FeatureExtraction writes 714 columns at most (landmarks, gaze, pose, AUs)
        check_width(path, "(OpenFace writes 714 at most); not an OpenFace CSV, not read")
        check_cells(path)  # before pandas, which would hold a 200 MB cell whole
        raw = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise StageInputError(f"{path}: not a readable OpenFace CSV: {exc}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in AU_INTENSITY if c not in raw.columns]
    if missing:
        raise StageInputError(f"{path}: missing column '{missing[0]}' (not an OpenFace AU CSV, "
                              "or AUs were not extracted: run FeatureExtraction with -aus)")
    if "frame" not in raw.columns and "timestamp" not in raw.columns:
        raise StageInputError(f"{path}: missing column 'frame' (and 'timestamp')")
    try:
        rows = _rows(raw, path, video_id, face_id, presence_threshold)
        rows.attrs["csv_span"] = _span(raw)
        return rows, int(raw["face_id"].nunique()) if "face_id" in raw.columns else 1
    except StageInputError:  # says what is wrong already (the path was given twice)
        raise
    except (ValueError, TypeError, KeyError) as exc:  # a repeated header, a cell like nan(ind)
        raise StageInputError(f"{path}: malformed OpenFace CSV: {type(exc).__name__}: "
                              f"{exc}") from None


def _check_complete(raw: pd.DataFrame, path: Path) -> None:
    """OpenFace fills every cell: an empty one in the columns read is a file cut off mid-row (or
    edited), not a frame without a face."""
    read = [c for c in ("frame", "timestamp", "success", "confidence", *AU_INTENSITY,
                        *AU_PRESENCE) if c in raw.columns]
    empty = raw[read].isna()
    if empty.to_numpy().any():
        row = int(np.flatnonzero(empty.any(axis=1).to_numpy())[0])
        line = row_lines(path, len(raw))[row]  # the file's line, as editors count (blank lines)
        raise StageInputError(f"{path}: line {line} has {int(empty.iloc[row].sum())} empty "
                              "cell(s) (a file cut off mid-row?); not read")


def _rows(raw: pd.DataFrame, path: Path, video_id: str, face_id: int,
          presence_threshold: float) -> pd.DataFrame:
    """The aus-schema rows of a parsed CSV whose columns were checked."""
    _check_complete(raw, path)
    if "face_id" in raw.columns and raw["face_id"].nunique() > 1:
        if face_id < 0:
            ok = raw["success"] if "success" in raw.columns else pd.Series(1, index=raw.index)
            face_id = int(ok.groupby(raw["face_id"]).sum().idxmax())
        raw = raw[raw["face_id"] == face_id]
        if raw.empty:
            raise StageInputError(f"{path}: no row with face_id {face_id}")
    if "frame" in raw.columns:
        frame_idx = raw["frame"].astype("int64") - 1
    else:
        frame_idx = pd.Series(np.arange(len(raw)), index=raw.index)
    if "timestamp" in raw.columns:
        t = raw["timestamp"].astype("float64")
    else:
        t = frame_idx / 30.0  # OpenFace's own default when a video gives no rate
    success = (raw["success"].astype(float) > 0) if "success" in raw.columns else \
        pd.Series(True, index=raw.index)
    conf = raw["confidence"].astype("float64") if "confidence" in raw.columns else \
        pd.Series(np.nan, index=raw.index)
    out = pd.DataFrame({"video_id": video_id, "frame_idx": frame_idx.to_numpy(),
                        "t": t.to_numpy(), "success": success.to_numpy(bool),
                        "confidence": conf.to_numpy()})
    mask = ~out["success"].to_numpy()
    for au, c in zip(AU_INTENSITY, AU_PRESENCE):
        r = raw[au].to_numpy(np.float64).copy()
        r[mask] = np.nan  # OpenFace writes 0 there: not a measurement
        out[au] = r
    for au, c in zip(AU_INTENSITY, AU_PRESENCE):
        if c in raw.columns:
            v = raw[c].to_numpy(np.float64).copy()
        else:
            v = (out[au].to_numpy() >= presence_threshold).astype(float)
        v[mask] = np.nan
        out[c] = v
    out = out.drop_duplicates("frame_idx", keep="first").sort_values("frame_idx")
    return out.reset_index(drop=True)


def _span(raw: pd.DataFrame) -> dict[str, float]:
    """How much of its video the whole CSV covers, every face's rows together (the kept face may
    leave before the video ends): "frames" (the last 1-based frame number, else the row count)
    and "seconds" (the timestamps' range plus one step; nan without timestamps)."""
    frames = float(pd.to_numeric(raw["frame"]).max()) if "frame" in raw.columns else len(raw)
    if "timestamp" not in raw.columns:
        return {"frames": frames, "seconds": float("nan")}
    t = np.unique(pd.to_numeric(raw["timestamp"]).to_numpy(np.float64))
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    return {"frames": frames, "seconds": float(t.max() - t.min()) + step if len(t) else 0.0}
