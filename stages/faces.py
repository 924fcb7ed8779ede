"""faces: find, measure and crop the face in every sampled frame with MediaPipe's FaceLandmarker.

    python -m stages.faces           # reads params.yaml:base,faces, data/frames -> data/faces

Per video, a FaceLandmarker in VIDEO running mode (it tracks between frames) gives 478 landmarks,
52 blendshapes and a head-pose matrix per face; BlazeFace (the detector inside the same bundle)
gives each face a confidence, which the landmarker does not report. When several faces are found
the one `faces.select` names is kept (largest box by default) and `n_faces` records how many there
were; from frame to frame the kept face stays the same person unless another is clearly preferred
(`select_face`: SWITCH_RATIO), so two people of about the same size do not alternate. The kept
face is cut out as an aligned crop: rotated so the eyes are level, a square of the face's size
plus `faces.margin` on each side, resized to `faces.size`, stored as JPEG bytes.

Every frame of data/frames gets a row; frames with no face have `face_found = false`, NaN
measurements, null landmarks and crop. The model bundle is found offline and hash-checked
(personality/facemodel.py; `faces.model_path` may be a file or the official URL). Videos run on
personality/executor.py's executor (`base.workers` local processes, one thread each, or the Dask
cluster PERSONALITY_CLUSTER names); memory holds one video's frames at a time. Each worker loads
MediaPipe and hash-checks the bundle once (`warm_up`, ~1.7 s); the landmarker graph itself is
built per video (~0.1 s), because VIDEO mode tracks from frame to frame: a landmarker carried over
from the previous video would make a video's rows depend on which worker ran it before.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from personality import schemas
from personality.common import (BaseParams, StageInputError, atomic_write_json, by_video,
                                get_logger, progress, repo_root, run_stage)
from personality.facemodel import BLENDSHAPES, head_pose_deg
from personality.executor import map_jobs, time_limit_s
from personality.video_io import decode_jpeg, encode_jpeg
from personality.video_shards import VideoShardWriter, index_videos, read_video

log = get_logger("faces")

# MediaPipe face-mesh indices of the eye corners (subject's right eye is on the image's left)
RIGHT_EYE = (33, 133)
LEFT_EYE = (263, 362)


@dataclasses.dataclass(frozen=True)
class FacesParams:
    model_path: str = ""  # face_landmarker.task: a file, the official URL, or "" (cache / package)
    num_faces: int = 2  # faces the landmarker looks for; n_faces saturates here
    select: Literal["largest", "central", "confident"] = "largest"  # which face to keep
    min_detection_confidence: float = 0.5
    size: int = 112  # side of the aligned crop, pixels
    margin: float = 0.2  # added on each side of the face, as a share of its size
    crop_quality: int = 90  # JPEG quality of the crops
    rows_per_shard: int = 5000


def check_params(p: FacesParams) -> None:
    if p.num_faces < 1:
        raise StageInputError(f"faces.num_faces: {p.num_faces} must be >= 1")
    if not 16 <= p.size <= 1024:
        raise StageInputError(f"faces.size: {p.size} must be in 16..1024")
    if not 0 <= p.margin <= 2:
        raise StageInputError(f"faces.margin: {p.margin} must be in [0, 2]")
    if not 0 < p.min_detection_confidence < 1:
        raise StageInputError(
            f"faces.min_detection_confidence: {p.min_detection_confidence} must be in (0, 1)")


# --------------------------------------------------------------------------------------------------
# pure geometry


def landmarks_px(face_landmarks, width: int, height: int) -> np.ndarray:
    """MediaPipe normalised landmarks -> (478, 3) float32 pixels; z is scaled like x."""
    pts = np.array([(p.x, p.y, p.z) for p in face_landmarks], dtype=np.float32)  # (478, 3)
    pts *= np.array([width, height, width], dtype=np.float32)
    return pts


def box_of(pts: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the landmarks' extent, (478, 3) -> 4 floats."""
    x0, y0 = pts[:, :2].min(0)
    x1, y1 = pts[:, :2].max(0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


# A face the rule prefers replaces the one kept in the previous frame only when it is this much
# better (1.25: a quarter larger, nearer the centre, more confident): two people of about the same
# size swapped from frame to frame, and one video's AU series and crops mixed both
SWITCH_RATIO = 1.25
CONTINUES_IOU = 0.3  # the face that overlaps the previous frame's this much is the same one


def select_face(boxes: list[tuple[float, float, float, float]], scores: list[float], *,
                how: str, width: int, height: int,
                previous: tuple[float, float, float, float] | None = None) -> int:
    """Index of the face to keep among `boxes` (x, y, w, h): the one `how` prefers, unless the
    face that continues `previous` (the box kept in the last frame with a face) is within
    SWITCH_RATIO of it."""
    if how == "largest":
        merit = [w * h for _, _, w, h in boxes]
    elif how == "central":
        merit = [1.0 / (1e-6 + math.hypot(x + w / 2 - width / 2, y + h / 2 - height / 2))
                 for x, y, w, h in boxes]
    else:
        merit = list(scores)
    k = int(np.argmax(merit))
    overlap = [_iou(b, previous) for b in boxes] if previous is not None else [0.0]
    j = int(np.argmax(overlap))
    if overlap[j] < CONTINUES_IOU or merit[k] > SWITCH_RATIO * merit[j]:
        return k
    return j


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return float(iw * ih / union) if union > 0 else 0.0


def align_matrix(pts: np.ndarray, *, size: int, margin: float) -> np.ndarray:
    """2x3 affine that maps the frame to a (size, size) crop with the eyes level.

    The landmarks (478, 3) are rotated about the eye midpoint by minus the eye-line angle; the
    crop is the square around their extent, enlarged by `margin` of its side on each side."""
    eye_r = pts[list(RIGHT_EYE), :2].mean(0)  # image left
    eye_l = pts[list(LEFT_EYE), :2].mean(0)
    angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
    c, s = math.cos(-angle), math.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    mid = (eye_r + eye_l) / 2
    rotated = (pts[:, :2] - mid) @ rot.T + mid  # (478, 2) with the eyes level
    lo, hi = rotated.min(0), rotated.max(0)
    centre = (lo + hi) / 2
    side = max(float((hi - lo).max()), 1.0) * (1 + 2 * margin)
    scale = size / side
    a = scale * rot
    b = scale * (mid - rot @ mid - (centre - side / 2))
    return np.hstack([a, b[:, None]]).astype(np.float64)  # (2, 3)


def aligned_crop(bgr: np.ndarray, pts: np.ndarray, *, size: int, margin: float) -> np.ndarray:
    """(size, size, 3) uint8 aligned face crop from the (H, W, 3) frame; outside is black."""
    import cv2

    m = align_matrix(pts, size=size, margin=margin)
    return cv2.warpAffine(bgr, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def match_confidence(box: tuple[float, float, float, float], detections) -> float:
    """Score of the BlazeFace detection whose centre falls in `box` (0 when none: the landmarker
    can keep tracking a face the detector no longer finds, in profile say)."""
    x, y, w, h = box
    best = 0.0
    for det in detections:
        bb = det.bounding_box
        cx, cy = bb.origin_x + bb.width / 2, bb.origin_y + bb.height / 2
        if x <= cx <= x + w and y <= cy <= y + h and det.categories:
            best = max(best, float(det.categories[0].score))
    return best


# --------------------------------------------------------------------------------------------------
# one video


def _empty_row() -> dict:
    return {"face_found": False, "n_faces": 0, "confidence": 0.0,
            "box_x": np.nan, "box_y": np.nan, "box_w": np.nan, "box_h": np.nan,
            "yaw": np.nan, "pitch": np.nan, "roll": np.nan, "landmarks": None, "crop": None,
            **{f"bs_{n}": np.nan for n in BLENDSHAPES}}


def faces_of_video(frames: pd.DataFrame, *, params: FacesParams) -> pd.DataFrame:
    """Run the landmarker (and BlazeFace, for confidences) over one video's frames (rows of
    data/frames). Returns one row per input frame, in time order, with the faces schema."""
    from personality.facemodel import detect_rgb, open_detector, open_landmarker

    import cv2
    import mediapipe as mp

    frames = frames.sort_values("frame_idx", kind="stable").reset_index(drop=True)
    rows = []
    last_ts, kept = -1, None  # kept: the box of the face kept in the last frame with one
    model = params.model_path or None
    # both as context managers: mediapipe's __del__ at interpreter exit raises
    with open_landmarker(mode="video", num_faces=params.num_faces, model_path=model,
                         min_detection_confidence=params.min_detection_confidence) as lm, \
            open_detector(model_path=model) as detector:
        for fr in frames.itertuples(index=False):
            row = {"video_id": fr.video_id, "frame_idx": int(fr.frame_idx), "t": float(fr.t),
                   "width": int(fr.width), "height": int(fr.height), **_empty_row()}
            rows.append(row)
            try:
                bgr = decode_jpeg(fr.jpeg)  # (H, W, 3)
            except StageInputError:
                continue
            # the same pixels as bgr[:, :, ::-1] made contiguous, ~17x faster (2.3 -> 0.13 ms
            # per 640x360 frame): a strided numpy copy walks the channels one byte at a time
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            ts = max(int(round(fr.t * 1000)), last_ts + 1)  # VIDEO mode: strictly increasing ms
            last_ts = ts
            result = detect_rgb(lm, rgb, ts)
            if not result.face_landmarks:
                continue
            faces = [landmarks_px(f, w, h) for f in result.face_landmarks]
            boxes = [box_of(p) for p in faces]
            detections = detector.detect(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).detections
            scores = [match_confidence(b, detections) for b in boxes]
            k = select_face(boxes, scores, how=params.select, width=w, height=h, previous=kept)
            pts, kept = faces[k], boxes[k]
            row.update(face_found=True, n_faces=len(faces), confidence=scores[k])
            row.update(zip(("box_x", "box_y", "box_w", "box_h"), boxes[k]))
            if result.facial_transformation_matrixes:
                row.update(zip(("yaw", "pitch", "roll"),
                               head_pose_deg(result.facial_transformation_matrixes[k])))
            if result.face_blendshapes:
                for cat in result.face_blendshapes[k]:
                    row[f"bs_{cat.category_name}"] = float(cat.score)
            row["landmarks"] = pts.reshape(-1)  # (478 * 3,) float32: x0, y0, z0, x1, ...
            crop = aligned_crop(bgr, pts, size=params.size, margin=params.margin)
            row["crop"] = encode_jpeg(crop, params.crop_quality)
    df = pd.DataFrame(rows, columns=list(schemas.ARTIFACTS["faces"].columns))
    floats = [c for c in df.columns if c.startswith("bs_")] + [
        "confidence", "box_x", "box_y", "box_w", "box_h", "yaw", "pitch", "roll"]
    df = df.astype({**{c: "float32" for c in floats}, "face_found": bool, "n_faces": "int16",
                    "frame_idx": "int64", "t": "float64", "width": "int32", "height": "int32"})
    return df


def warm_up(params: FacesParams) -> None:
    """Once per worker process: import MediaPipe, hash-check the bundle and build the landmarker
    and detector once, so that the first video does not pay for it."""
    from personality.facemodel import open_detector, open_landmarker

    model = params.model_path or None
    with open_landmarker(mode="video", num_faces=params.num_faces, model_path=model), \
            open_detector(model_path=model):
        pass


def _job(job: dict) -> dict:
    """Worker entry: reads its own video's rows (nothing large crosses the pipe), never raises."""
    t0 = time.perf_counter()
    try:
        frames = read_video(job["parts"], job["video_id"], "frames",
                            columns=["video_id", "frame_idx", "t", "width", "height", "jpeg"])
        df = faces_of_video(frames, params=job["params"])
        return {"video_id": job["video_id"], "df": df, "error": None,
                "seconds": time.perf_counter() - t0}
    except Exception as exc:  # one broken video must not stop the others
        return {"video_id": job["video_id"], "df": None, "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - t0}


def _lost(job: dict, why: str) -> dict:
    """The row of a video whose face search killed its worker twice (a crash inside MediaPipe):
    a failed video, and the stage goes on (personality.executor)."""
    return {"video_id": job["video_id"], "df": None, "error": why, "seconds": 0.0}


def run(params: FacesParams, base: BaseParams, root: Path | None = None) -> dict:
    """data/frames -> data/faces under `root`; returns what metrics/faces.json holds."""
    from personality.facemodel import find_task_file

    root = root or repo_root()
    check_params(params)
    find_task_file(params.model_path or None)  # fail early, once, with the fix in the message
    n_frames: dict[str, int] = {}  # the time limit of a video's job: 2 s per kept frame + 600 s
    index = index_videos(root / schemas.ARTIFACTS["frames"].path, "frames", rows=n_frames)
    jobs = [{"video_id": vid, "parts": [(str(s), rg) for s, rg in parts], "params": params}
            for vid, parts in sorted(index.items())]
    failed: dict[str, str] = {}
    per_video: dict[str, float] = {}
    n_rows = n_found = n_multi = 0
    seconds = 0.0
    with VideoShardWriter("faces", path=root / schemas.ARTIFACTS["faces"].path,
                          rows_per_shard=params.rows_per_shard) as out, \
            progress(total=len(jobs), desc="faces", unit="video") as bar:
        for res in map_jobs(_job, jobs, workers=base.workers, label=lambda j: j["video_id"],
                            setup=warm_up, setup_args=(params,), on_lost=_lost,
                            time_limit=lambda j: time_limit_s(n_frames.get(j["video_id"]), 2.0)):
            bar.update(1)
            seconds += res["seconds"]
            if res["error"]:
                failed[res["video_id"]] = res["error"]
                log.warning("skipped %s: %s", res["video_id"], res["error"])
                continue
            df = res["df"]
            out.write(df)
            n_rows += len(df)
            n_found += int(df["face_found"].sum())
            n_multi += int((df["n_faces"] > 1).sum())
            per_video[res["video_id"]] = round(float(df["face_found"].mean()), 4)
        if jobs and len(failed) == len(jobs):
            raise StageInputError("no video could be processed: " + "; ".join(
                list(failed.values())[:5]))
    no_face = sorted(v for v, r in per_video.items() if r == 0)
    for vid in no_face:
        log.warning("%s: no face in any frame", vid)
    summary = {"n_videos": len(jobs), "n_failed": len(failed), "n_frames": n_rows,
               "face_rate": round(n_found / n_rows, 4) if n_rows else 0.0,
               "frames_with_several_faces": n_multi,
               "videos_without_face": no_face,
               # per-video rates only where they matter, as a list (common.by_video) and counted
               "n_videos_below_95pct": sum(r < 0.95 for r in per_video.values()),
               "videos_below_95pct": by_video({v: r for v, r in per_video.items() if r < 0.95},
                                              "face_rate"),
               "failed": by_video(failed, "error", root=root)}
    atomic_write_json(root / "metrics" / "faces.json", summary)
    # timings vary from run to run: logged and sent to MLflow (run_stage), never DVC-tracked
    summary["timings"] = {"frames_per_second_per_core": round(n_rows / seconds, 1)
                          if seconds else None}
    log.info("faces: %d frames, face found in %.1f%%", n_rows, 100 * summary["face_rate"])
    return summary


def main(argv: list[str] | None = None) -> None:
    run_stage("faces", FacesParams, run)


if __name__ == "__main__":
    main()
