"""functionals: one row per video of behavioural features, the per-video summaries that personality
computing feeds its classical models (Vinciarelli & Mohammadi 2014; Biel & Gatica-Perez 2013;
eGeMAPS for the voice).

    python -m stages.functionals      # reads params.yaml:functionals, data/clips.parquet (or the
                                      # manifest), data/aus, data/faces, data/audio
                                      # -> data/functionals/functionals.parquet

Columns (every one a float; NaN where the video lacks the modality: no face in any frame, no or
silent audio):

| column                      | what                                                             |
|-----------------------------|------------------------------------------------------------------|
| `AUxx_r_mean`, `_sd`        | mean and sd of the AU intensity (0-5) over frames with a face    |
| `AUxx_r_p50`, `_p90`        | median and 90th percentile of the intensity                      |
| `AUxx_c_share`              | share of face frames where the AU is active (intensity >=        |
|                             | `active_threshold`, OpenFace's presence AUxx_c at the default 1) |
| `AUxx_onsets_per_s`         | inactive -> active transitions per second of face time           |
| `head_yaw_sd`, `_pitch_sd`, | sd of the head angles (degrees) over face frames                 |
| `head_roll_sd`              |                                                                  |
| `head_speed_mean`, `_p90`   | angular speed of the head, degrees / s between consecutive face  |
|                             | frames (sqrt of the summed squared yaw / pitch / roll steps)     |
| `blink_rate`                | blinks per second of face time: onsets of AU45 (eye closure)     |
|                             | above `blink_threshold`                                          |
| `face_share`                | share of sampled frames with a face                              |
| `fn_*`                      | the audio stage's functionals, names unchanged (stages/audio.py: |
|                             | rms_db, f0, voicing ... mean / std / p10 / p50 / p90, active and |
|                             | voiced shares, voiced onsets per second = a syllable rate)       |
| `f0_semitone_mean`, `_sd`   | pitch level and variability in semitones re 27.5 Hz over voiced  |
|                             | frames (eGeMAPS's F0semitoneFrom27.5Hz mean and sd); with fn_*;  |
|                             | of the recorded audio, as fn_* (a late track's lead left out)    |
| `egemaps_*`, `compare_*`    | openSMILE's eGeMAPSv02 / ComParE_2016 functionals, names         |
|                             | unchanged, when params audio.feature_sets has egemaps / compare  |

Frames are the sampled frames of data/faces (frames.fps): onsets and speeds are per second of
that clock, so they do not depend on the sampling rate except through what it can resolve
(a blink of 0.3 s is one or two frames at 5 fps).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (SchemaError, StageInputError, get_logger, read_artifact, repo_root,
                                run_stage, write_artifact)
from personality.schemas import AU_INTENSITY, AUDIO_FUNCTIONAL_PREFIXES

log = get_logger("functionals")

HEAD = ("yaw", "pitch", "roll")


@dataclasses.dataclass(frozen=True)
class FunctionalsParams:
    active_threshold: float = 1.0  # AU intensity (0-5) at or above which an AU counts as active
    blink_threshold: float = 1.0  # AU45 intensity at or above which the eyes count as closed
    audio: bool = True  # include the audio functionals (fn_*, f0_semitone_*, egemaps_*...)


def au_columns() -> list[str]:
    """The AU functionals' names, in column order."""
    return [f"{a}_{s}" for a in AU_INTENSITY for s in ("mean", "sd", "p50", "p90")] + [
        f"{a[:-2]}_c_share" for a in AU_INTENSITY] + [
        f"{a[:-2]}_onsets_per_s" for a in AU_INTENSITY]


def onsets(active: np.ndarray) -> np.ndarray:
    """(T, K) bool -> (K,) number of False -> True transitions (a first active frame counts)."""
    prev = np.vstack([np.zeros((1, active.shape[1]), bool), active[:-1]])
    return (active & ~prev).sum(axis=0)


def au_functionals(x: np.ndarray, seconds: float, *, active_threshold: float) -> dict[str, float]:
    """x: (T, 17) AU intensities of the frames with a face (no NaN), in time order; seconds: the
    face time. Returns the AU columns of `au_columns()`, NaN when T = 0."""
    names = au_columns()
    if len(x) == 0:
        return dict.fromkeys(names, np.nan)
    active = x >= active_threshold  # (T, 17)
    rate = onsets(active) / max(seconds, 1e-9)
    values = np.concatenate([
        np.stack([x.mean(0), x.std(0), np.percentile(x, 50, axis=0),
                  np.percentile(x, 90, axis=0)], axis=1).ravel(),  # (17 * 4,) AU-major
        active.mean(0), rate])
    return dict(zip(names, values.tolist()))


def head_functionals(angles: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """angles: (T, 3) yaw, pitch, roll in degrees of the face frames; t: (T,) seconds."""
    out = {f"head_{a}_sd": np.nan for a in HEAD} | {"head_speed_mean": np.nan,
                                                     "head_speed_p90": np.nan}
    if len(angles) == 0:
        return out
    out.update({f"head_{a}_sd": float(angles[:, k].std()) for k, a in enumerate(HEAD)})
    if len(angles) > 1:
        dt = np.maximum(np.diff(t), 1e-9)
        speed = np.sqrt((np.diff(angles, axis=0) ** 2).sum(axis=1)) / dt  # (T - 1,) deg / s
        out.update(head_speed_mean=float(speed.mean()), head_speed_p90=float(np.percentile(speed, 90)))
    return out


def face_time(t: np.ndarray, n_frames: int) -> float:
    """Seconds the face frames span: their count times the sampling step."""
    if len(t) == 0:
        return 0.0
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.2
    return len(t) * step if n_frames else 0.0


def visual_functionals(aus: pd.DataFrame, faces: pd.DataFrame, *, p: FunctionalsParams
                       ) -> dict[str, float]:
    """One video's AU, head and blink functionals from its data/aus and data/faces rows."""
    aus = aus.sort_values("frame_idx", kind="stable")
    x = aus[list(AU_INTENSITY)].to_numpy(np.float64)  # (T, 17), NaN rows: no face
    ok = ~np.isnan(x).any(axis=1)
    t = aus["t"].to_numpy(np.float64)[ok]
    seconds = face_time(t, int(ok.sum()))
    out = au_functionals(x[ok], seconds, active_threshold=p.active_threshold)
    blink = x[ok, AU_INTENSITY.index("AU45_r")][:, None] >= p.blink_threshold
    out["blink_rate"] = float(onsets(blink)[0] / seconds) if seconds > 0 else np.nan
    faces = faces.sort_values("frame_idx", kind="stable")
    found = faces["face_found"].to_numpy(bool)
    angles = faces[list(HEAD)].to_numpy(np.float64)[found]
    out.update(head_functionals(angles, faces["t"].to_numpy(np.float64)[found]))
    out["face_share"] = float(found.mean()) if len(found) else 0.0
    return out


def semitones(f0: np.ndarray) -> dict[str, float]:
    """Pitch level and variability in semitones re 27.5 Hz over the voiced frames (f0 > 0)."""
    f0 = np.asarray(f0, np.float64)
    f0 = f0[np.isfinite(f0) & (f0 > 0)]
    if len(f0) < 2:
        return {"f0_semitone_mean": np.nan, "f0_semitone_sd": np.nan}
    st = 12 * np.log2(f0 / 27.5)
    return {"f0_semitone_mean": float(st.mean()), "f0_semitone_sd": float(st.std())}


def audio_functionals(row: dict | None, fn_columns: list[str]) -> dict[str, float]:
    """The functionals of one data/audio row (fn_*, egemaps_*, compare_*: `fn_columns`) plus,
    when librosa's fn_* are there, the semitone pitch functionals; NaN when the video has no
    usable audio (row None, no stream, silent, error)."""
    unusable = row is None or not row["has_audio"] or row["silent"] or row["error"]
    out = {c: (np.nan if unusable else float(row[c])) for c in fn_columns}
    if any(c.startswith(AUDIO_FUNCTIONAL_PREFIXES["librosa"]) for c in fn_columns):
        out.update(semitones(np.asarray([] if unusable else row["f0"])[_recorded_from(row):]))
    return out


def _recorded_from(row: dict | None) -> int:
    """The first f0 frame of the recorded audio: a late track's leading alignment silence
    (data/audio's audio_offset_s > 0) is left out, from the first frame centred at or after its
    end, as the audio stage's fn_* leave it out (stages/audio.py, _row); 0 otherwise (an early
    or unshifted track, or an artifact without the column)."""
    offset = (row or {}).get("audio_offset_s")
    if offset is None or not np.isfinite(offset) or offset <= 0:
        return 0
    sr = int(row["sr"])
    lead, hop = int(round(offset * sr)), int(round(float(row["hop_s"]) * sr))
    return -(-lead // hop)


def _grouped(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {v: g for v, g in df.groupby("video_id", sort=False)}


def _video_ids(root: Path) -> list[str]:
    for name in ("clips", "manifest"):
        path = root / schemas.ARTIFACTS[name].path
        if path.exists():
            return read_artifact(name, path=path, columns=["video_id"])["video_id"].tolist()
    raise StageInputError(f"{root / 'data'}: no clips.parquet or manifest.parquet: run ingest")


def _any_video(root: Path) -> bool:
    """Whether ingest listed any video (data/clips.parquet): the sources of AU sequences
    (perfex, openface_csv) list none, and the audio stage then writes no shard at all."""
    path = root / schemas.ARTIFACTS["clips"].path
    if not path.exists():
        return True  # no clips table: the audio stage's own shards say what there is
    paths = read_artifact("clips", path=path, columns=["path"])["path"]
    if not (paths != "").any():
        log.info("no video in data/clips.parquet (an AU-only source): no audio functionals")
        return False
    return True


def _audio_rows(root: Path) -> tuple[dict[str, dict], list[str]]:
    import pyarrow.parquet as pq

    folder = root / schemas.ARTIFACTS["audio"].path
    shards = sorted(folder.glob("*.parquet"))
    if not shards:
        raise StageInputError(f"{folder}: no audio shards; run the audio stage first")
    prefixes = tuple(AUDIO_FUNCTIONAL_PREFIXES.values())
    fn = [c for c in _shard(pq.read_schema, shards[0]).names if c.startswith(prefixes)]
    names = set(_shard(pq.read_schema, shards[0]).names)
    # audio_offset_s, sr, hop_s: where a late track's recording starts (_recorded_from)
    cols = ["video_id", "has_audio", "silent", "error", "f0", *fn,
            *[c for c in ("audio_offset_s", "sr", "hop_s") if c in names]]
    df = pd.concat([_shard(pq.read_table, s, columns=cols).to_pandas() for s in shards])
    return {r["video_id"]: r for r in df.to_dict("records")}, fn


def _shard(read, shard: Path, **kwargs):
    """pyarrow's `read` of one data/audio shard; an unreadable one is a SchemaError naming it."""
    import pyarrow as pa

    try:
        return read(shard, **kwargs)
    except (pa.ArrowInvalid, pa.ArrowKeyError, OSError, KeyError) as exc:
        raise SchemaError(f"{shard}: not a readable audio shard ({exc}); re-run the audio "
                          "stage") from None


def compute(root: Path, p: FunctionalsParams) -> pd.DataFrame:
    """The functionals table of every video of the clips (or manifest) under `root`."""
    ids = _video_ids(root)
    aus = _grouped(read_artifact("aus", path=root / schemas.ARTIFACTS["aus"].path,
                                 columns=["video_id", "frame_idx", "t", *AU_INTENSITY]))
    faces = _grouped(read_artifact("faces", path=root / schemas.ARTIFACTS["faces"].path,
                                   columns=["video_id", "frame_idx", "t", "face_found", *HEAD]))
    audio = p.audio and _any_video(root)  # an AU-only source (perfex, openface_csv): no audio
    rows, fn = _audio_rows(root) if audio else ({}, [])
    empty_aus = pd.DataFrame(columns=["frame_idx", "t", *AU_INTENSITY], dtype=float)
    empty_faces = pd.DataFrame({"frame_idx": [], "t": [], "face_found": [],
                                **{a: [] for a in HEAD}})
    out = []
    for vid in ids:
        row = {"video_id": vid, **visual_functionals(aus.get(vid, empty_aus),
                                                     faces.get(vid, empty_faces), p=p)}
        if audio:
            row.update(audio_functionals(rows.get(vid), fn))
        out.append(row)
    return pd.DataFrame(out)


def run(params: FunctionalsParams, base=None, root: Path | None = None) -> dict:
    """data/aus, data/faces, data/audio under `root` -> data/functionals; returns a summary."""
    root = root or repo_root()
    table = compute(root, params)
    write_artifact("functionals", table, path=root / schemas.ARTIFACTS["functionals"].path)
    summary = {"videos": int(len(table)), "columns": int(table.shape[1] - 1),
               "without_face": int(table["face_share"].eq(0).sum())}
    log.info("functionals: %d videos, %d columns", summary["videos"], summary["columns"])
    return summary


def main() -> None:
    run_stage("functionals", FunctionalsParams, run)


if __name__ == "__main__":
    main()
