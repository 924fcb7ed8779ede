"""The one place where artifact layouts live. Every stage checks what it reads and writes here.

An artifact is a Parquet file (`sharded=False`) or a folder of Parquet shards that
`pandas.read_parquet(folder)` reads whole (`sharded=True`). `columns` lists the columns a reader may
rely on, with a coarse kind (int, float, bool, str, bytes, list); extra columns are allowed.
Every per-frame artifact carries `video_id`, `frame_idx` and `t` (seconds).
"""
from __future__ import annotations

import dataclasses

import pandas as pd
from pandas.api import types as ptypes

TRAITS = ("O", "C", "E", "A", "N")
TRAIT_NAMES = {"O": "openness", "C": "conscientiousness", "E": "extraversion",
               "A": "agreeableness", "N": "neuroticism"}
SPLITS = ("train", "val", "test")

# OpenFace 2.0 AU names the `aus` stage writes, whatever its backend.
AU_INTENSITY = ("AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r",
                "AU12_r", "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r",
                "AU45_r")
AU_PRESENCE = tuple(a.replace("_r", "_c") for a in AU_INTENSITY)


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    path: str  # relative to the repo root
    columns: dict[str, str]
    sharded: bool = False
    doc: str = ""


_PER_FRAME = {"video_id": "str", "frame_idx": "int", "t": "float"}

ARTIFACTS: dict[str, ArtifactSpec] = {
    "manifest": ArtifactSpec(
        "data/manifest.parquet",
        {"video_id": "str", "path": "str", "split": "str", "subject_id": "str", "dataset": "str",
         **{t: "float" for t in TRAITS},
         "duration_s": "float", "fps": "float", "has_audio": "bool"},
        doc="one row per video; `path` relative to the repo root or absolute; traits in [0,1] "
            "(NaN for unlabelled videos)"),
    "user_study": ArtifactSpec(
        "data/user_study.parquet",
        {"video_id": "str", "rater_id": "str", **{t: "float" for t in TRAITS}},
        doc="one row per (video, rater): Likert ratings on 1-5"),
    "synthetic_cues": ArtifactSpec(
        "data/synthetic_cues.parquet",
        {"video_id": "str", "subject_id": "str"},
        doc="the synthetic generator's latent cues per clip (`cue_*` columns): ground truth for "
            "tests and the data card"),
    "frames": ArtifactSpec(
        "data/frames", {**_PER_FRAME, "width": "int", "height": "int", "jpeg": "bytes"},
        sharded=True, doc="sampled frames as JPEG bytes"),
    "faces": ArtifactSpec(
        "data/faces", {**_PER_FRAME, "face_found": "bool"}, sharded=True,
        doc="per frame: face box, landmarks, blendshapes, head pose, aligned crop"),
    "aus": ArtifactSpec(
        "data/aus", {**_PER_FRAME, "success": "bool", **{a: "float" for a in AU_INTENSITY}},
        sharded=True, doc="OpenFace-named AU intensities on 0-5, NaN where no face"),
    "audio": ArtifactSpec(
        "data/audio", {"video_id": "str", "has_audio": "bool"}, sharded=True,
        doc="per video: windowed audio features, functionals and the resampled wave"),
}


def matches_kind(series: pd.Series, kind: str) -> bool:
    """Whether a column's dtype fits a coarse kind. Object columns are checked on one value."""
    dtype = series.dtype
    if kind == "float":
        return ptypes.is_float_dtype(dtype) or ptypes.is_integer_dtype(dtype)
    if kind == "int":
        return ptypes.is_integer_dtype(dtype)
    if kind == "bool":
        return ptypes.is_bool_dtype(dtype)
    if kind == "str":
        return ptypes.is_string_dtype(dtype) or ptypes.is_object_dtype(dtype)
    first = series.dropna()
    first = first.iloc[0] if len(first) else None
    if kind == "bytes":
        return first is None or isinstance(first, (bytes, bytearray))
    if kind == "list":
        return first is None or hasattr(first, "__len__")
    raise ValueError(f"unknown column kind {kind!r}")
