"""aus: facial Action Unit intensities per frame, OpenFace-named, from either backend.

    python -m stages.aus             # reads params.yaml:aus, data/faces -> data/aus

Backends (`aus.backend`), one output schema:
  mediapipe     (default) from data/faces: each AU mixes MediaPipe blendshapes (ARKit -> FACS
                correspondences) and landmark geometry in a face-aligned frame normalised by the
                inter-ocular distance; every feature is calibrated per video against the subject's
                neutral baseline (a low quantile for blendshapes, the median for geometry, as
                OpenFace's person-specific normalisation does), then mapped to 0-5.
                docs/frontend.md says, per AU, what it is made of and how far to trust it.
  openface_csv  OpenFace FeatureExtraction CSVs in `aus.openface_dir`, one per video of
                data/clips.parquet: `<video_id>.csv`, or named as FeatureExtraction names its
                output after the video (`alice_01.mp4` -> `alice_01.csv`, flat or in a tree that
                mirrors the videos' folders: `002003/FC1_T.csv`; openface_names). Headers with
                or without spaces, older and newer layouts, success == 0 rows masked, one face
                kept when there are several (face_id). A video without a CSV, one whose CSV
                several videos could own, an unreadable CSV and one that is a symlink out of
                the folder are in metrics/aus.json's `failed`; CSVs no video takes are counted
                in the log; none matching at all fails the stage, naming both sides.

Output data/aus/ (Parquet shards, one row group per video): video_id, frame_idx, t, success,
confidence, AU01_r ... AU45_r (0-5), AU01_c ... AU45_c (0/1); NaN, not 0, where there is no face.
"""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, StageInputError, atomic_write_json, by_video, get_logger,
                                progress, read_artifact, repo_root, run_stage, safe_join)
from personality.openface import read_openface_csv
from personality.schemas import AU_INTENSITY, AU_PRESENCE
from personality.video_shards import VideoShardWriter, index_videos, read_video

log = get_logger("aus")


@dataclasses.dataclass(frozen=True)
class AusParams:
    backend: Literal["mediapipe", "openface_csv"] = "mediapipe"
    baseline_quantile: float = 0.1  # neutral level of each blendshape in a video (low quantile)
    geometry_quantile: float = 0.5  # neutral level of each geometric feature (median)
    min_baseline_frames: int = 5  # fewer face frames: blendshapes uncalibrated (neutral = 0)
    presence_threshold: float = 1.0  # AUxx_c = AUxx_r >= this
    openface_dir: str = ""  # openface_csv: folder of the videos' CSVs (relative to the repo root)
    openface_face_id: int = -1  # openface_csv: face to keep; -1 = the one with most success rows
    rows_per_shard: int = 20000


def check_params(p: AusParams) -> None:
    for key in ("baseline_quantile", "geometry_quantile"):
        if not 0.0 <= getattr(p, key) <= 1.0:
            raise StageInputError(f"aus.{key}: {getattr(p, key)} must be in [0, 1]")
    if not 0 < p.presence_threshold <= 5:
        raise StageInputError(f"aus.presence_threshold: {p.presence_threshold} must be in (0, 5]")
    if p.backend == "openface_csv" and not p.openface_dir:
        raise StageInputError("aus.openface_dir: set it to the folder of OpenFace CSVs "
                              "(one per video) for backend openface_csv")


# --------------------------------------------------------------------------------------------------
# landmark geometry (MediaPipe face-mesh indices; "R" is the subject's right, the image's left)

EYE_R = (33, 133)  # outer, inner corner
EYE_L = (263, 362)
LID_R = (159, 145)  # upper, lower lid middle
LID_L = (386, 374)
BROW_INNER = ((107, 55), (336, 285))  # (upper, lower edge) R, L
BROW_MID = ((105, 52), (334, 282))
BROW_OUTER = ((70, 46), (300, 276))
CHEEK = (50, 280)
NOSE_ALA = (64, 294)
SUBNASALE = 2
LIP_TOP, LIP_IN_TOP, LIP_IN_BOTTOM, LIP_BOTTOM = 0, 13, 14, 17
MOUTH_CORNERS = (61, 291)
CHIN = 152


def face_frame(lm: np.ndarray) -> np.ndarray:
    """Landmarks (n, 478, 3) pixels -> the same points in a face-aligned frame, (n, 478, 3):
    origin at the eye midpoint, x from the right eye to the left eye, y down towards the
    subnasale (orthogonalised), z = x cross y, all divided by the inter-ocular distance (IOD), so
    in-plane rotation, scale and much of the head turn drop out."""
    eye_r = lm[:, list(EYE_R)].mean(1)  # (n, 3)
    eye_l = lm[:, list(EYE_L)].mean(1)
    mid = (eye_r + eye_l) / 2
    ex = eye_l - eye_r
    iod = np.linalg.norm(ex, axis=1, keepdims=True)  # (n, 1)
    ex = ex / np.maximum(iod, 1e-6)
    down = lm[:, SUBNASALE] - mid
    ey = down - (down * ex).sum(1, keepdims=True) * ex
    ey = ey / np.maximum(np.linalg.norm(ey, axis=1, keepdims=True), 1e-6)
    ez = np.cross(ex, ey)
    basis = np.stack([ex, ey, ez], axis=2)  # (n, 3, 3): columns are the axes
    rel = lm - mid[:, None, :]  # (n, 478, 3)
    return np.einsum("npk,nkj->npj", rel, basis) / np.maximum(iod, 1e-6)[:, :, None]


def geometry_features(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Geometric AU cues per frame from landmarks (n, 478, 3) pixels; each (n,), in IOD units (eye
    openness: a ratio), oriented so that larger means more of the action."""
    f = face_frame(lm)
    y = f[..., 1]  # (n, 478), down is positive

    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(f[:, a] - f[:, b], axis=1)

    eye_y = (y[:, list(EYE_R)].mean(1) + y[:, list(EYE_L)].mean(1)) / 2  # ~0 by construction

    def brow_height(pairs) -> np.ndarray:
        return np.mean([eye_y - y[:, list(p)].mean(1) for p in pairs], axis=0)

    inner, mid = brow_height(BROW_INNER), brow_height(BROW_MID)
    eye_open = np.mean([dist(*lid) / np.maximum(dist(*eye), 1e-6)
                        for lid, eye in ((LID_R, EYE_R), (LID_L, EYE_L))], axis=0)
    corner_up = y[:, SUBNASALE] - y[:, list(MOUTH_CORNERS)].mean(1)
    return {
        "brow_inner": inner,
        "brow_outer": brow_height(BROW_OUTER),
        "brow_lower": -(inner + mid) / 2 - dist(BROW_INNER[0][0], BROW_INNER[1][0]) / 2,
        "eye_open": eye_open,
        "eye_close": -eye_open,
        "lower_lid": eye_y - y[:, list(LID_R[1:] + LID_L[1:])].mean(1),
        "cheek": eye_y - y[:, list(CHEEK)].mean(1),
        "nose_wrinkle": eye_y - y[:, list(NOSE_ALA)].mean(1),
        "upper_lip": y[:, SUBNASALE] - y[:, LIP_TOP],
        "corner_up": corner_up,
        "corner_down": -corner_up,
        "mouth_width": dist(*MOUTH_CORNERS),
        "lip_gap": dist(LIP_IN_TOP, LIP_IN_BOTTOM),
        "jaw": y[:, CHIN] - y[:, SUBNASALE],
        "lip_thin": -(dist(LIP_TOP, LIP_IN_TOP) + dist(LIP_IN_BOTTOM, LIP_BOTTOM)),
    }


# Each AU: (feature, weight, deviation that reads as 5). Features `bs:<a>+<b>` are the mean of
# those blendshapes (score in [0, 1]); `geo:<name>` are geometry_features() above. Per feature the
# deviation from the video's neutral baseline is scaled to 0-5 and clipped at 0, then the weighted
# sum is clipped to 0-5. The scales are engineering estimates (no labelled data here), see the docs.
AU_RECIPES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "AU01_r": (("bs:browInnerUp", 0.5, 1.0), ("geo:brow_inner", 0.5, 0.15)),
    "AU02_r": (("bs:browOuterUpLeft+browOuterUpRight", 0.5, 1.0), ("geo:brow_outer", 0.5, 0.15)),
    "AU04_r": (("bs:browDownLeft+browDownRight", 0.5, 1.0), ("geo:brow_lower", 0.5, 0.12)),
    "AU05_r": (("bs:eyeWideLeft+eyeWideRight", 0.5, 1.0), ("geo:eye_open", 0.5, 0.15)),
    "AU06_r": (("geo:cheek", 0.4, 0.06), ("geo:lower_lid", 0.3, 0.05),
               ("bs:cheekSquintLeft+cheekSquintRight", 0.3, 1.0)),
    "AU07_r": (("bs:eyeSquintLeft+eyeSquintRight", 0.6, 1.0), ("geo:lower_lid", 0.2, 0.05),
               ("geo:eye_close", 0.2, 0.10)),
    "AU09_r": (("geo:nose_wrinkle", 0.6, 0.06), ("bs:noseSneerLeft+noseSneerRight", 0.4, 1.0)),
    "AU10_r": (("bs:mouthUpperUpLeft+mouthUpperUpRight", 0.6, 1.0), ("geo:upper_lip", 0.4, 0.08)),
    # full scales 1.5x the first guess (1.0, 0.12): chosen on the train split's per-frame ground
    # truth and cues (docs/frontend.md, "Cue recovery"); at 1.0 the rest-level jitter of a smiling
    # photo already read as AU12_c
    "AU12_r": (("bs:mouthSmileLeft+mouthSmileRight", 0.6, 1.5), ("geo:corner_up", 0.4, 0.18)),
    "AU14_r": (("bs:mouthDimpleLeft+mouthDimpleRight", 1.0, 1.0),),
    "AU15_r": (("bs:mouthFrownLeft+mouthFrownRight", 0.6, 1.0), ("geo:corner_down", 0.4, 0.10)),
    "AU17_r": (("bs:mouthShrugLower", 0.8, 1.0), ("bs:mouthShrugUpper", 0.2, 1.0)),
    "AU20_r": (("bs:mouthStretchLeft+mouthStretchRight", 0.7, 1.0), ("geo:mouth_width", 0.3, 0.25)),
    "AU23_r": (("bs:mouthPressLeft+mouthPressRight", 0.5, 1.0), ("geo:lip_thin", 0.5, 0.10)),
    "AU25_r": (("geo:lip_gap", 0.6, 0.40), ("bs:jawOpen", 0.4, 1.0)),
    "AU26_r": (("bs:jawOpen", 0.6, 1.0), ("geo:jaw", 0.4, 0.50)),
    "AU45_r": (("bs:eyeBlinkLeft+eyeBlinkRight", 0.5, 1.0), ("geo:eye_close", 0.5, 0.25)),
}


def feature_values(name: str, faces: pd.DataFrame, geo: dict[str, np.ndarray]) -> np.ndarray:
    kind, spec = name.split(":", 1)
    if kind == "geo":
        return geo[spec]
    cols = [f"bs_{b}" for b in spec.split("+")]
    return faces[cols].to_numpy(np.float64).mean(1)


def baseline(values: np.ndarray, *, kind: str, params: AusParams) -> float:
    """The subject's neutral level of one feature over a video's face frames (n,)."""
    ok = values[np.isfinite(values)]
    if kind == "bs":
        if len(ok) < params.min_baseline_frames:
            return 0.0  # too few frames to know the person: trust the model's own zero
        return float(np.quantile(ok, params.baseline_quantile))
    return float(np.quantile(ok, params.geometry_quantile)) if len(ok) else np.nan


def aus_from_faces(faces: pd.DataFrame, *, params: AusParams) -> pd.DataFrame:
    """One video's rows of data/faces (n,) -> its AU rows (n,): intensities, presences, NaN
    where no face was found. Calibrated against this video's own neutral baseline."""
    faces = faces.sort_values("frame_idx", kind="stable").reset_index(drop=True)
    n = len(faces)
    found = faces["face_found"].to_numpy(bool)
    out = pd.DataFrame({"video_id": faces["video_id"], "frame_idx": faces["frame_idx"],
                        "t": faces["t"], "success": found,
                        "confidence": faces["confidence"].astype("float64")})
    intens = {au: np.full(n, np.nan) for au in AU_INTENSITY}
    if found.any():
        sub = faces[found]
        lm = np.stack([np.asarray(v, np.float64) for v in sub["landmarks"]]).reshape(
            len(sub), -1, 3)  # (m, 478, 3)
        geo = geometry_features(lm)
        cache: dict[str, np.ndarray] = {}
        for au, recipe in AU_RECIPES.items():
            total = np.zeros(len(sub))
            for feat, weight, full in recipe:
                if feat not in cache:
                    v = feature_values(feat, sub, geo)
                    b = baseline(v, kind=feat.split(":")[0], params=params)
                    cache[feat] = v - b  # deviation from neutral, (m,)
                total += weight * np.clip(5.0 * cache[feat] / full, 0.0, 5.0)
            intens[au][found] = np.clip(total, 0.0, 5.0)
    for au, c in zip(AU_INTENSITY, AU_PRESENCE):
        out[au] = intens[au]
    for au, c in zip(AU_INTENSITY, AU_PRESENCE):
        out[c] = np.where(np.isnan(intens[au]), np.nan,
                          (intens[au] >= params.presence_threshold).astype(float))
    return out


# --------------------------------------------------------------------------------------------------


def _from_mediapipe(params: AusParams, root: Path, out: VideoShardWriter,
                    failed: dict[str, str]) -> tuple[int, int]:
    index = index_videos(root / schemas.ARTIFACTS["faces"].path, "faces")
    cols = [c for c in schemas.ARTIFACTS["faces"].columns if c != "crop"]  # crops: not needed
    n_rows = n_ok = 0
    for vid in progress(sorted(index), desc="aus", unit="video"):
        try:
            faces = read_video(index[vid], vid, "faces", columns=cols)
            df = aus_from_faces(faces, params=params)
        except Exception as exc:  # one broken video must not stop the others
            failed[vid] = f"{type(exc).__name__}: {exc}"
            log.warning("skipped %s: %s", vid, failed[vid])
            continue
        out.write(df)
        n_rows += len(df)
        n_ok += int(df["success"].sum())
    return n_rows, n_ok


def _from_openface(params: AusParams, root: Path, out: VideoShardWriter,
                   failed: dict[str, str]) -> tuple[int, int]:
    folder = Path(params.openface_dir)
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        raise StageInputError(f"{folder}: aus.openface_dir is not a folder")
    clips = _clips(root)
    found, missing = match_openface_csvs(folder, clips)
    if not found:
        raise StageInputError(_nothing_matched(folder, clips, missing))
    failed.update(missing)
    if missing:  # their AUs are missing downstream: say so here, not only in metrics/aus.json
        log.warning("%d video(s) without their OpenFace CSV (in metrics/aus.json's failed), e.g. "
                    "%s", len(missing), next(iter(missing.values())))
    n_rows = n_ok = 0
    timing = clips.set_index("video_id")[["duration_s", "fps"]]
    for vid, csv in progress(sorted(found.items()), desc="aus:openface", unit="video"):
        try:  # a symlink out of the folder is refused, not read: the folder is the dataset
            df = read_openface_csv(safe_join(folder, csv.relative_to(folder)), video_id=vid,
                                   face_id=params.openface_face_id,
                                   presence_threshold=params.presence_threshold)
            check_span(df, csv, *timing.loc[vid])
        except StageInputError as exc:
            failed[vid] = str(exc)
            log.warning("skipped %s", exc)
            continue
        out.write(df)
        n_rows += len(df)
        n_ok += int(df["success"].sum())
    _report_unmatched(folder, set(found.values()))
    return n_rows, n_ok


def _clips(root: Path) -> pd.DataFrame:
    """The videos ingest listed (data/clips.parquet) whose AUs are wanted; not the rows of an
    AU-only source (no video: its AUs came with the dataset, `_from_source`)."""
    path = root / schemas.ARTIFACTS["clips"].path
    if not path.exists():
        raise StageInputError(f"{path}: not found; run ingest first (dvc repro ingest)")
    clips = read_artifact("clips", path=path, columns=["video_id", "path", "duration_s", "fps"])
    return clips[clips["path"] != ""].reset_index(drop=True)


def check_span(df: pd.DataFrame, csv: Path, duration_s: float, fps: float) -> None:
    """StageInputError when an OpenFace CSV covers a clearly different length than its video
    (more than 1 s and 10% apart): the CSV of another video under this one's name, or of a cut.
    Its span is read two ways, and one agreeing is enough: the timestamps (a re-encode at another
    frame rate keeps them) and the frame count at the video's rate (a CSV without timestamps);
    both over the whole CSV (`csv_span`: every face's rows, as the kept face may leave early)."""
    if not (np.isfinite(duration_s) and np.isfinite(fps) and duration_s > 0 and fps > 0):
        return  # ingest could not time the video: nothing to compare with
    span = df.attrs.get("csv_span") or {
        "frames": int(df["frame_idx"].max()) + 1,
        "seconds": float(df["t"].max() - df["t"].min()) + 1.0 / fps}
    by_frames = span["frames"] / fps
    by_time = span["seconds"] if np.isfinite(span["seconds"]) else by_frames
    tolerance = max(1.0, 0.1 * duration_s)
    if min(abs(by_time - duration_s), abs(by_frames - duration_s)) > tolerance:
        raise StageInputError(
            f"{csv}: covers {by_time:.1f} s ({span['frames']:.0f} frames) but its video is "
            f"{duration_s:.1f} s long: is it this video's OpenFace CSV? (re-run FeatureExtraction "
            "on the video, or name the CSV after the right one)")


def openface_names(video_id: str, video_path: str) -> list[str]:
    """Where an OpenFace CSV of a video may be, relative to aus.openface_dir, in the order tried:
    `<video_id>.csv`, then the video's own name as FeatureExtraction writes it (`-f
    clips/alice.mp4` -> `alice.csv`), below as many of its parent folders (up to 3) as a
    mirrored output tree keeps (`session/FC1_T.csv` for `.../session/FC1_T.mp4`), deepest first."""
    path = Path(video_path).with_suffix(".csv")
    parts = path.parts
    first = 1 if path.is_absolute() else 0  # never the root folder itself
    mirrored = ["/".join(parts[i:]) for i in range(max(len(parts) - 4, first), len(parts))
                if ".." not in parts[i:]]
    return list(dict.fromkeys([f"{video_id}.csv", *mirrored]))


def match_openface_csvs(folder: Path, clips: pd.DataFrame
                        ) -> tuple[dict[str, Path], dict[str, str]]:
    """{video_id: its CSV} for the clips that have one, and {video_id: why not} for the rest: no
    CSV under any of its names, or one found only under a name that several clips share (two
    videos `a/x.mp4`, `b/x.mp4` and a flat `x.csv`: whose it is cannot be told)."""
    names = {vid: openface_names(vid, video) for vid, video in zip(clips["video_id"], clips["path"])}
    shared = collections.Counter(n for listed in names.values() for n in listed)
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for vid, listed in names.items():
        hit = next((n for n in listed if (folder / n).is_file()), None)
        if hit is None:
            missing[vid] = f"{vid}: no OpenFace CSV in {folder} (looked for {', '.join(listed)})"
        elif shared[hit] > 1:
            missing[vid] = (f"{folder / hit}: {shared[hit]} videos could own it; name their CSVs "
                            f"<video_id>.csv ({listed[0]}) or keep their folders (a mirrored tree)")
        else:
            found[vid] = folder / hit
    return found, missing


def _nothing_matched(folder: Path, clips: pd.DataFrame, missing: dict[str, str]) -> str:
    csvs = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.csv"))[:3]
    if clips.empty:
        return f"{folder}: data/clips.parquet lists no video to take OpenFace AUs for"
    return (f"{folder}: no OpenFace CSV matches any of the {len(clips)} videos of "
            f"data/clips.parquet; e.g. {next(iter(missing.values()))}; the folder holds "
            + (", ".join(csvs) + ("..." if len(csvs) == 3 else "") if csvs else "no CSV"))


def _report_unmatched(folder: Path, used: set[Path]) -> None:
    """CSVs of the folder that no video of the manifest took: a warning with a count."""
    spare = sorted(p for p in folder.rglob("*.csv") if p not in used)
    if spare:
        log.warning("%d OpenFace CSV(s) in %s were not read: they match no video of "
                    "data/clips.parquet, or several (those are under metrics/aus.json's "
                    "failed), e.g. %s", len(spare), folder, spare[0].relative_to(folder))


def _from_source(params: AusParams, root: Path, out: VideoShardWriter) -> tuple[int, int]:
    """Pass through the AU sequences ingest read from the dataset itself (sources perfex,
    openface_csv: no video), deriving AUxx_c where the source gave none."""
    path = root / schemas.ARTIFACTS["source_aus"].path
    if not path.exists():
        return 0, 0
    source = read_artifact("source_aus", path=path)
    n_rows = n_ok = 0
    for vid, df in source.groupby("video_id", sort=True):
        df = df.sort_values("frame_idx").reset_index(drop=True)
        for au, c in zip(AU_INTENSITY, AU_PRESENCE):
            if c not in df.columns or df[c].isna().all():
                df[c] = np.where(df[au].isna(), np.nan,
                                 (df[au] >= params.presence_threshold).astype(float))
        if "confidence" not in df.columns:
            df["confidence"] = np.nan
        out.write(df[list(schemas.ARTIFACTS["aus"].columns)])
        n_rows += len(df)
        n_ok += int(df["success"].sum())
    return n_rows, n_ok


def run(params: AusParams, base: BaseParams | None = None, root: Path | None = None) -> dict:
    """data/faces (or OpenFace CSVs) -> data/aus under `root`; returns metrics/aus.json."""
    root = root or repo_root()
    check_params(params)
    failed: dict[str, str] = {}
    with VideoShardWriter("aus", path=root / schemas.ARTIFACTS["aus"].path,
                          rows_per_shard=params.rows_per_shard) as out:
        reader = _from_openface if params.backend == "openface_csv" else _from_mediapipe
        read_rows, n_ok = reader(params, root, out, failed)
        source_rows, ok = _from_source(params, root, out)
        n_rows, n_ok = read_rows + source_rows, n_ok + ok
        if failed and n_rows == 0:
            raise StageInputError("no video gave AUs: " + "; ".join(list(failed.values())[:5]))
    summary = {"backend": params.backend, "n_frames": n_rows,
               "success_rate": round(n_ok / n_rows, 4) if n_rows else 0.0,
               "n_failed": len(failed), "failed": by_video(failed, "error", root=root)}
    atomic_write_json(root / "metrics" / "aus.json", summary)
    # an AU-only source (perfex, openface_csv) has no video for the backend: say where AUs were
    # taken from
    origin = " + ".join(([params.backend] if read_rows or not source_rows else [])
                        + (["the dataset's own AUs"] if source_rows else []))
    log.info("aus (%s): %d frames, %.1f%% with a face", origin, n_rows,
             100 * summary["success_rate"])
    return summary


def main(argv: list[str] | None = None) -> None:
    run_stage("aus", AusParams, run)


if __name__ == "__main__":
    main()
