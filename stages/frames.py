"""frames: decode every video of the manifest, sample frames, resize, store them as JPEG bytes.

    python -m stages.frames          # reads params.yaml:base,frames, data/manifest.parquet -> data/frames

Decoding is PyAV (whatever FFmpeg reads: H.264, HEVC, VP9, MJPEG, ...); times come from each
frame's pts, so variable frame rate is handled; rotation metadata (display matrix) is applied.
Sampling: `frames.fps` (first frame at or after each 1/fps tick) or `frames.per_video` (that many
evenly spaced frames, DeepPersonality's uniform sampling). Streaming: one video's sampled frames
at most are in memory; videos run on personality/executor.py's executor (`base.workers` local
processes, one thread each, or the Dask cluster PERSONALITY_CLUSTER names: same bytes either way).

Output data/frames/ (Parquet shards, one row group per video):
    video_id str, frame_idx int (0-based, presentation order), t float (s), width int,
    height int, jpeg bytes.
A video that cannot be decoded is reported by name in metrics/frames.json (`failed`) and the log;
it has no rows, and the other videos go on. The stage fails only when no video at all decodes.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from personality import schemas
from personality.common import (BaseParams, StageInputError, atomic_write_json, by_video,
                                get_logger, progress, read_artifact, repo_root, run_stage)
from personality.executor import map_jobs, time_limit_s
from personality.video_io import encode_jpeg, iter_frames
from personality.video_shards import VideoShardWriter

log = get_logger("frames")


@dataclasses.dataclass(frozen=True)
class FramesParams:
    fps: float = 5.0  # sampled frames per second (ignored when per_video > 0); params.yaml: 8
    per_video: int = 0  # > 0: this many evenly spaced frames per video instead of a rate
    max_side: int = 640  # resize so that the longer side is at most this (0: keep)
    jpeg_quality: int = 90
    rows_per_shard: int = 2000  # frames per Parquet shard (bounds the writer's buffer)


def check_params(p: FramesParams) -> None:
    if p.per_video < 0:
        raise StageInputError(f"frames.per_video: {p.per_video} must be >= 0")
    if p.per_video == 0 and not p.fps > 0:
        raise StageInputError(f"frames.fps: {p.fps} must be > 0 (or set frames.per_video)")
    if not 1 <= p.jpeg_quality <= 100:
        raise StageInputError(f"frames.jpeg_quality: {p.jpeg_quality} must be in 1..100")
    if p.max_side < 0 or 0 < p.max_side < 16:
        raise StageInputError(f"frames.max_side: {p.max_side} must be 0 or >= 16")


def extract_video(*, video_id: str, path: str | Path, params: FramesParams
                  ) -> tuple[pd.DataFrame, dict]:
    """Sample one video. Returns its rows (n, 6) and a report (decoded, errors, rotation, ...).
    Raises StageInputError naming the file when it cannot be decoded or yields no frame."""
    report: dict = {}
    rows = {"frame_idx": [], "t": [], "width": [], "height": [], "jpeg": []}
    frames = iter_frames(path, fps=None if params.per_video else params.fps,
                         per_video=params.per_video or None, max_side=params.max_side,
                         pixel_format="bgr24", report=report)
    for idx, t, bgr in frames:  # bgr: (H, W, 3) uint8
        rows["frame_idx"].append(idx)
        rows["t"].append(t)
        rows["height"].append(bgr.shape[0])
        rows["width"].append(bgr.shape[1])
        rows["jpeg"].append(encode_jpeg(bgr, params.jpeg_quality))
    if not rows["jpeg"]:
        why = "no decodable frame" + (" (file breaks off)" if report.get("truncated") else "")
        raise StageInputError(f"{path}: {why}")
    df = pd.DataFrame({"video_id": video_id, **rows})
    df = df.astype({"frame_idx": "int64", "t": "float64", "width": "int32", "height": "int32"})
    return df, report


def _job(job: dict) -> dict:
    """Worker entry: never raises, so one bad video cannot take the pool down."""
    t0 = time.perf_counter()
    try:
        df, report = extract_video(video_id=job["video_id"], path=job["path"],
                                   params=job["params"])
        return {"video_id": job["video_id"], "df": df, "report": report, "error": None,
                "seconds": time.perf_counter() - t0}
    except StageInputError as exc:
        return {"video_id": job["video_id"], "df": None, "report": {}, "error": str(exc),
                "seconds": time.perf_counter() - t0}
    except Exception as exc:  # a decoder bug must not stop the other videos either
        return {"video_id": job["video_id"], "df": None, "report": {},
                "error": f"{job['path']}: {type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - t0}


def _label(job: dict) -> str:
    return f"{job['video_id']} ({job['path']})"


def _lost(job: dict, why: str) -> dict:
    """The row of a video whose decoding killed its worker twice (personality.executor: a crash
    in native code): a failed video like any other, and the stage goes on."""
    return {"video_id": job["video_id"], "df": None, "report": {},
            "error": f"{job['path']}: {why}", "seconds": 0.0}


def resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def run(params: FramesParams, base: BaseParams, root: Path | None = None) -> dict:
    """Sample every manifest video under `root` into data/frames; returns metrics/frames.json."""
    root = root or repo_root()
    check_params(params)
    manifest = read_artifact("clips", path=root / schemas.ARTIFACTS["clips"].path)
    # AU-only sources (perfex, openface_csv) have no video: their path is empty
    jobs = [{"video_id": r.video_id, "path": str(resolve(root, r.path)), "params": params,
             "duration_s": r.duration_s} for r in manifest.itertuples() if r.path]
    failed: dict[str, str] = {}
    notes: dict[str, str] = {}
    n_rows, decode_s = 0, 0.0
    out_path = root / schemas.ARTIFACTS["frames"].path
    with VideoShardWriter("frames", path=out_path, rows_per_shard=params.rows_per_shard) as out, \
            progress(total=len(jobs), desc="frames", unit="video") as bar:
        for res in map_jobs(_job, jobs, workers=base.workers, label=_label, on_lost=_lost,
                            time_limit=lambda job: time_limit_s(job["duration_s"], 20.0)):
            bar.update(1)
            decode_s += res["seconds"]
            if res["error"]:
                failed[res["video_id"]] = res["error"]
                log.warning("skipped %s: %s", res["video_id"], res["error"])
                continue
            rep = res["report"]
            said = [damaged_video_note(rep, len(res["df"]))] if (
                rep.get("truncated") or rep.get("errors") or rep.get("gaps")) else []
            said += [clock_jump_note(rep["clock_jumps"])] if rep.get("clock_jumps") else []
            if said:
                notes[res["video_id"]] = "; ".join(said)
                log.warning("%s: %s", res["video_id"], notes[res["video_id"]])
            n_rows += len(res["df"])
            out.write(res["df"])
        if jobs and len(failed) == len(jobs):
            raise StageInputError("no video could be decoded: " + "; ".join(
                list(failed.values())[:5]))
    summary = {"n_videos": len(jobs), "n_ok": len(jobs) - len(failed), "n_failed": len(failed),
               "n_frames": n_rows, "sampling": (f"per_video={params.per_video}"
                                                if params.per_video else f"fps={params.fps}"),
               "max_side": params.max_side, "failed": by_video(failed, "error", root=root),
               "n_warnings": len(notes), "warnings": by_video(notes, "warning", root=root)}
    atomic_write_json(root / "metrics" / "frames.json", summary)
    # timings vary from run to run: logged and sent to MLflow (run_stage), never DVC-tracked
    summary["timings"] = {"worker_seconds": round(decode_s, 2)}
    log.info("frames: %d frames from %d/%d videos", n_rows, summary["n_ok"], len(jobs))
    return summary


def damaged_video_note(report: dict, kept: int) -> str:
    """In plain words (metrics/frames.json's warnings, predict's): what decoding a damaged video
    stream skipped, from iter_frames' `report`."""
    parts = [f"{report['errors']} corrupt video packet(s) skipped"] if report.get("errors") else []
    if report.get("gaps"):
        parts.append(f"{report['missing_s']:.2f} s of video missing in {report['gaps']} "
                     f"stretch(es), the first at {report['gap_at_s']:.2f} s (damaged bytes the "
                     "demuxer skipped, or a recording that paused)")
    if report.get("truncated"):
        parts.append("the video stream breaks off early" + (
            f" (the file {report['cut']})" if report.get("cut") else ""))
    return "; ".join(parts) + f": scores rest on the {kept} frame(s) that decoded"


def clock_jump_note(jumps: int) -> str:
    """In plain words: an MPEG-TS / PS stream whose clock restarts or jumps `jumps` times."""
    return (f"the stream's clock restarts or jumps {jumps} time(s) (recordings or segments "
            "joined end to end?): each part is timed from where the one before it ended, the "
            "audio too, and the length the file declares is not its length")


def main(argv: list[str] | None = None) -> None:
    run_stage("frames", FramesParams, run)


if __name__ == "__main__":
    main()
