"""Benchmark the visual front-end (frames -> faces -> aus) against DeepPersonality's face pipeline.

    python bench/frontend.py                      # writes bench/results/frontend.json, prints a table
    python bench/frontend.py --baseline-frames 60 # time dlib on more frames before extrapolating
    python bench/frontend.py --scaling 40         # clips/min of the front-end stages with 1 and 2
                                                  # local workers and a 2-worker Dask LocalCluster
                                                  # (bench/results/frontend_scaling.json)

The clip is ChaLearn-like and made here: 15 s, 30 fps, 1280x720, H.264 + AAC, one talking face
(the synthetic generator's renderer at 720p; cached in bench/results/). Everything runs in this one
process on one core (OpenCV, BLAS and OpenMP limited to one thread; PyAV decodes with one thread).

Ours, per clip, at frames.fps = 8 (the default, 120 frames; --fps 5 for the old rate): decode with
PyAV (H.264: a packet scan plans the kept frames, the decoder skips non-reference frames outside
them), convert and resize only the sampled ones, JPEG-encode (frames); JPEG-decode, MediaPipe
FaceLandmarker in VIDEO mode + BlazeFace for the confidence + aligned 112x112 crop (faces); blendshape + geometry AUs (aus).

Baseline, DeepPersonality's documented face pipeline (dpcv/data/face_extract + video_to_image):
every frame decoded with OpenCV and written as a JPEG file, each file read back, dlib HOG detection
with one upsample, 68-point landmarks, rotation about the eye centre so the eyes are level, the
landmarks again on the rotated image, the crop from them, resized to 112x112 and written as a file.
dlib's HOG detector at one upsample costs about a second per 720p frame, so it runs on the first
`--baseline-frames` files and its per-frame cost is extrapolated to all 450 (said in the JSON).
Needs requirements-bench.txt (dlib-bin) and Debian's libdlib-data (shape_predictor_68); without
dlib the baseline falls back to MediaPipe per image, and the JSON says so.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
DLIB_MODEL = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")  # libdlib-data
CLIP_SECONDS, CLIP_FPS, CLIP_W, CLIP_H = 15.0, 30.0, 1280, 720


def make_clip(path: Path, seconds: float = CLIP_SECONDS, fps: float = CLIP_FPS,
              width: int = CLIP_W, height: int = CLIP_H) -> Path:
    """A ChaLearn-like clip (by default 15 s, 30 fps, 1280x720; H.264 High profile with B-frames
    as YouTube serves it, AAC) of one talking face from the synthetic renderer; kept at `path` once
    made. The renderer writes MPEG-4 Part 2 (bit-reproducible, personality/synthetic.py): the
    clip is transcoded to H.264, whose decoding costs more. bench/memory.py makes its 1080p one."""
    if path.exists():
        return path
    from personality import synthetic as syn

    rigs = syn.load_rigs()
    syn._init_worker(rigs)
    app = syn.draw_appearance(np.random.default_rng(3), len(rigs), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rendered = Path(tmp) / "rendered.mp4"
        syn.render_clip(dict(index=0, seed=1, video_id="bench", path=str(rendered),
                             cues=[0.5] * 10, appearance=app, duration=seconds, fps=fps,
                             sr=16000, width=width, height=height))
        to_h264(rendered, path)
    return path


def to_h264(src: Path, dst: Path) -> None:
    """Transcode `src`'s video to H.264 (libx264, CRF 23, preset medium: High profile, B-frames)
    and copy its audio packets as they are; written to a temporary name, then renamed."""
    import av

    part = dst.with_suffix(".part.mp4")
    with av.open(str(src)) as inp, av.open(str(part), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate,
                              options={"crf": "23", "preset": "medium", "profile": "high"})
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        aout = out.add_stream_from_template(ain) if ain is not None else None
        n_frames = 0
        for packet in inp.demux():  # in file order: the muxer wants the streams interleaved
            if packet.stream is vin:
                for frame in packet.decode():
                    frame.pts, frame.time_base = n_frames, Fraction(1) / vin.average_rate
                    frame.pict_type = av.video.frame.PictureType.NONE  # else it forces I/P types
                    n_frames += 1
                    out.mux(vout.encode(frame))
            elif packet.stream is ain and packet.dts is not None:
                packet.stream = aout
                out.mux(packet)
        out.mux(vout.encode())
    part.replace(dst)


def clip_info(path: Path) -> dict:
    """What the clip is, read from the file: duration, frame rate, size, codec, B-frames."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return {"seconds": round(float(c.duration / av.time_base), 2),
                "fps": round(float(v.average_rate), 2), "size": f"{v.width}x{v.height}",
                "codec": v.codec_context.name, "profile": v.codec_context.profile,
                "b_frames": bool(v.codec_context.has_b_frames), "bytes": path.stat().st_size}


# --------------------------------------------------------------------------------------------------
# ours


def bench_ours(clip: Path, fps: float) -> dict:
    from stages.aus import AusParams, aus_from_faces
    from stages.faces import FacesParams, faces_of_video
    from stages.frames import FramesParams, extract_video
    from personality.executor import single_thread

    single_thread()
    # the model graphs load once per worker process; timed apart from the per-clip work
    t0 = time.perf_counter()
    from personality.facemodel import open_landmarker

    with open_landmarker(mode="video"):
        pass
    model_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames, report = extract_video(video_id="bench", path=clip, params=FramesParams(fps=fps))
    t_frames = time.perf_counter() - t0
    t0 = time.perf_counter()
    faces = faces_of_video(frames, params=FacesParams())
    t_faces = time.perf_counter() - t0
    t0 = time.perf_counter()
    aus = aus_from_faces(faces, params=AusParams())
    t_aus = time.perf_counter() - t0
    n = len(frames)
    total = t_frames + t_faces + t_aus
    per_frame = faces_per_frame(frames)
    # what no trimming of our own code can beat: decoding plus the landmarker on every frame
    floor = t_frames + n * per_frame["landmarker"] / 1000
    return {
        "sampled_frames": n, "decoded_frames": report["decoded"],
        "face_rate": round(float(faces["face_found"].mean()), 4),
        "au_success_rate": round(float(aus["success"].mean()), 4),
        "seconds": {"frames": round(t_frames, 3), "faces": round(t_faces, 3),
                    "aus": round(t_aus, 3), "total": round(total, 3),
                    "model_load_once_per_worker": round(model_load, 3)},
        "frames_per_second_per_core": {
            "frames (sampled frames out)": round(n / t_frames, 1),
            "frames (source frames decoded)": round(report["decoded"] / t_frames, 1),
            "faces": round(n / t_faces, 1), "aus": round(n / t_aus, 1),
            "front-end": round(n / total, 1)},
        "real_time_factor": round(CLIP_SECONDS / total, 2),
        "faces_ms_per_frame": per_frame,
        "ceiling_real_time_factor": {"value": round(CLIP_SECONDS / floor, 2),
                                     "note": "frames stage + the landmarker alone"},
    }


def faces_per_frame(frames) -> dict:
    """Where a faces frame's time goes, in ms per frame (a second pass over the sampled frames
    with the stage's own calls, each timed apart): the landmarker (VIDEO mode, faces.num_faces),
    BlazeFace for the confidence, JPEG decode, BGR -> RGB, aligned crop + JPEG encode."""
    import cv2
    import mediapipe as mp

    from personality.facemodel import detect_rgb, open_detector, open_landmarker
    from personality.video_io import decode_jpeg, encode_jpeg
    from stages.faces import FacesParams, aligned_crop, landmarks_px

    p = FacesParams()
    spent = dict.fromkeys(("landmarker", "blazeface", "jpeg_decode", "bgr_to_rgb",
                           "crop_and_encode"), 0.0)

    def timed(key, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        spent[key] += time.perf_counter() - t0
        return out

    with open_landmarker(mode="video", num_faces=p.num_faces) as lm, open_detector() as det:
        for i, fr in enumerate(frames.sort_values("frame_idx").itertuples(index=False)):
            bgr = timed("jpeg_decode", decode_jpeg, fr.jpeg)
            rgb = timed("bgr_to_rgb", cv2.cvtColor, bgr, cv2.COLOR_BGR2RGB)
            result = timed("landmarker", detect_rgb, lm, rgb, int(round(fr.t * 1000)) + i)
            timed("blazeface", lambda: det.detect(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)))
            if result.face_landmarks:
                pts = landmarks_px(result.face_landmarks[0], rgb.shape[1], rgb.shape[0])
                timed("crop_and_encode", lambda: encode_jpeg(
                    aligned_crop(bgr, pts, size=p.size, margin=p.margin), p.crop_quality))
    return {k: round(1000 * v / max(len(frames), 1), 2) for k, v in spent.items()}


# --------------------------------------------------------------------------------------------------
# DeepPersonality's pipeline (re-implemented from its description, not its code)


def _dlib_crop(img, detector, predictor, size: int = 112):
    """One frame: HOG detection (1 upsample), 68 landmarks, eyes levelled by rotating the image
    about the left-eye centre, landmarks again, crop from brow-line to chin, resize. None if no
    face."""
    import cv2

    rects = detector(img, 1)
    if len(rects) == 0:
        return None
    pts = np.array([(p.x, p.y) for p in predictor(img, rects[0]).parts()], float)  # (68, 2)
    eye_l, eye_r = pts[36:42].mean(0), pts[42:48].mean(0)
    angle = math.degrees(math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0]))
    rot = cv2.getRotationMatrix2D((float(eye_l[0]), float(eye_l[1])), angle, 1.0)
    img_rot = cv2.warpAffine(img, rot, (img.shape[1], img.shape[0]))
    pts = np.array([(p.x, p.y) for p in predictor(img_rot, rects[0]).parts()], float)
    dist = float(np.linalg.norm(eye_r - eye_l))
    top = max(0, int(pts[27, 1] - dist))
    bottom = min(img.shape[0], int(pts[8, 1]))
    left, right = max(0, int(pts[1, 0])), min(img.shape[1], int(pts[15, 0]))
    if bottom <= top or right <= left:
        return None
    return cv2.resize(img_rot[top:bottom, left:right], (size, size))


def bench_baseline(clip: Path, n_detect: int) -> dict:
    import cv2

    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="dp_baseline_"))
    try:
        t0 = time.perf_counter()
        cap = cv2.VideoCapture(str(clip))
        files = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            name = work / f"frame_{len(files) + 1}.jpg"
            cv2.imwrite(str(name), frame)
            files.append(name)
        cap.release()
        t_extract = time.perf_counter() - t0
        n_total = len(files)

        backend, note = "dlib", ""
        try:
            import dlib

            if not DLIB_MODEL.exists():
                raise ImportError(f"{DLIB_MODEL} missing (apt-get install libdlib-data)")
            detector = dlib.get_frontal_face_detector()
            predictor = dlib.shape_predictor(str(DLIB_MODEL))

            def one(img):
                return _dlib_crop(img, detector, predictor)
            ctx = None
        except ImportError as exc:
            backend, note = "mediapipe-image", f"dlib unavailable ({exc}): MediaPipe per image"
            from personality.facemodel import detect_rgb, open_landmarker
            from stages.faces import aligned_crop, landmarks_px

            ctx = open_landmarker(mode="image")
            lm = ctx.__enter__()

            def one(img):
                res = detect_rgb(lm, img[:, :, ::-1])
                if not res.face_landmarks:
                    return None
                pts = landmarks_px(res.face_landmarks[0], img.shape[1], img.shape[0])
                return aligned_crop(img, pts, size=112, margin=0.2)

        sample = files[: max(1, min(n_detect, n_total))]
        found = 0
        t0 = time.perf_counter()
        for i, name in enumerate(sample):
            img = cv2.imread(str(name))
            crop = one(img)
            if crop is not None:
                found += 1
                cv2.imwrite(str(work / f"face_{i + 1}.jpg"), crop)
        t_detect = time.perf_counter() - t0
        if ctx is not None:
            ctx.__exit__(None, None, None)
        per_frame = t_detect / len(sample)
        total = t_extract + per_frame * n_total
        return {"backend": backend, "note": note, "frames": n_total,
                "detect_frames_timed": len(sample), "face_rate_on_timed": found / len(sample),
                "seconds": {"decode_and_write_all": round(t_extract, 3),
                            "read_detect_align_crop_write_per_frame": round(per_frame, 4),
                            "total_extrapolated": round(total, 2)},
                "frames_per_second_per_core": round(n_total / total, 2),
                "real_time_factor": round(CLIP_SECONDS / total, 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(result: dict) -> str:
    o, b = result["ours"], result["baseline"]
    fps = o["frames_per_second_per_core"]
    s = o["seconds"]
    rows = [
        "| stage | seconds per clip | frames/s per core |",
        "|---|---:|---:|",
        f"| frames (decode {o['decoded_frames']}, keep {o['sampled_frames']}) | {s['frames']:.2f} | "
        f"{fps['frames (sampled frames out)']} sampled ({fps['frames (source frames decoded)']} "
        "decoded) |",
        f"| faces | {s['faces']:.2f} | {fps['faces']} |",
        f"| aus | {s['aus']:.3f} | {fps['aus']} |",
        f"| **front-end** | **{s['total']:.2f}** | **{fps['front-end']}** |",
        f"| baseline ({b['backend']}, all {b['frames']} frames) | {b['seconds']['total_extrapolated']:.1f}"
        f" | {b['frames_per_second_per_core']} |",
        "",
        f"Speed-up per clip: **{result['speedup_per_clip']}x**; front-end real-time factor on one "
        f"core: **{o['real_time_factor']}x**; baseline {b['real_time_factor']}x. "
        f"Model load once per worker: {s['model_load_once_per_worker']:.2f} s.",
        "",
        "faces, ms per frame: " + ", ".join(f"{k} {v}" for k, v in o["faces_ms_per_frame"].items())
        + f". Ceiling with everything but decoding and the landmarker free: "
        f"{o['ceiling_real_time_factor']['value']}x real time.",
    ]
    return "\n".join(rows)


def _front_end(root: Path, base, fps: float) -> float:
    """Wall seconds of the frames, faces and aus stages' `run` under `root`."""
    from stages import aus, faces, frames

    t0 = time.perf_counter()
    frames.run(frames.FramesParams(fps=fps), base, root=root)
    faces.run(faces.FacesParams(), base, root=root)
    aus.run(aus.AusParams(), base, root=root)
    return time.perf_counter() - t0


@contextlib.contextmanager
def _cluster(setting: str):
    """("", 0) / ("local:2", 0) as given; "running": a 2-worker LocalCluster started here, before
    the clock, and its scheduler address (what `dask scheduler` + `dask worker` on a cluster give):
    the stages connect to it, and its start-up is reported apart."""
    if setting != "running":
        yield setting, 0.0
        return
    from distributed import LocalCluster

    from personality.executor import THREAD_VARS

    t0 = time.perf_counter()
    # as `dask worker --nthreads 1` with OMP_NUM_THREADS=1 etc. (README: running on a cluster)
    saved = {var: os.environ.get(var) for var in THREAD_VARS}
    os.environ.update({var: "1" for var in THREAD_VARS})
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
    finally:
        for var, value in saved.items():
            os.environ.pop(var, None) if value is None else os.environ.__setitem__(var, value)
    with cluster:
        yield cluster.scheduler_address, time.perf_counter() - t0


def bench_scaling(clip: Path, n_clips: int, fps: float) -> dict:
    """The frames, faces and aus stages (their `run`, as DVC runs them) on `n_clips` copies of the
    clip, with 1 worker (in-process), 2 local workers, `local:2` (each stage starts its own
    2-worker Dask LocalCluster, as a DVC stage does) and a 2-worker cluster started once that the
    stages connect to by address. Wall time includes worker start-up and model loads (not the
    running cluster's own start-up, reported apart): what a stage costs, not only the per-video
    work."""
    import pandas as pd

    from personality.common import BaseParams

    rows = []
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        pd.DataFrame({"video_id": [f"c{i:03d}" for i in range(n_clips)],
                      "path": [str(clip)] * n_clips, "dataset": "bench",
                      "duration_s": CLIP_SECONDS, "fps": CLIP_FPS, "has_audio": True}
                     ).to_parquet(root / "data" / "clips.parquet")
        for name, workers, cluster in (("local, 1 worker", 1, ""), ("local, 2 workers", 2, ""),
                                       ("Dask local:2 (a LocalCluster per stage)", 1, "local:2"),
                                       ("Dask, 2 workers, one running cluster (tcp://)", 1,
                                        "running")):
            with _cluster(cluster) as (setting, startup_s):
                os.environ["PERSONALITY_CLUSTER"] = setting
                wall = _front_end(root, BaseParams(workers=workers), fps)
            rows.append({"setting": name, "wall_s": round(wall, 1),
                         "clips_per_minute": round(60 * n_clips / wall, 1),
                         **({"cluster_startup_s": round(startup_s, 1)} if startup_s else {})})
        os.environ.pop("PERSONALITY_CLUSTER", None)
    for row in rows:
        row["x_one_worker"] = round(row["clips_per_minute"] / rows[0]["clips_per_minute"], 2)
    return {"n_clips": n_clips, "clip_seconds": CLIP_SECONDS, "fps": fps, "rows": rows,
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count()}


def scaling_table(result: dict) -> str:
    lines = ["| executor | wall s | clips / min | x 1 worker |", "|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['wall_s']} | {r['clips_per_minute']} | {r['x_one_worker']} |"
              for r in result["rows"]]
    lines.append(f"\n{result['n_clips']} clips of {result['clip_seconds']:.0f} s 720p, frames.fps "
                 f"{result['fps']}; load average after: {result['load_average_1_5_15']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", type=float, default=8.0, help="frames.fps for our front-end")
    ap.add_argument("--baseline-frames", type=int, default=30,
                    help="frames the baseline's detector is timed on, then extrapolated")
    ap.add_argument("--out", default=str(RESULTS / "frontend.json"))
    ap.add_argument("--scaling", type=int, default=0, metavar="N_CLIPS",
                    help="instead: the scaling table on N copies of the clip")
    args = ap.parse_args(argv)

    clip = make_clip(RESULTS / "chalearn_like_720p_h264.mp4")
    if args.scaling:
        result = bench_scaling(clip, args.scaling, args.fps)
        out = RESULTS / "frontend_scaling.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(scaling_table(result) + f"\n\nwritten: {out}")
        return
    ours = bench_ours(clip, args.fps)
    baseline = bench_baseline(clip, args.baseline_frames)
    result = {
        "clip": clip_info(clip),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "threads": 1, "platform": platform.platform()},
        "ours": ours, "baseline": baseline,
        "speedup_per_clip": round(baseline["seconds"]["total_extrapolated"]
                                  / ours["seconds"]["total"], 1),
        "goals": {"speedup_at_least": 20, "real_time_factor_at_least": 5},
    }
    result["goals"]["met"] = bool(result["speedup_per_clip"] >= 20
                                  and ours["real_time_factor"] >= 5)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
