"""Benchmark the audio stage on one core: seconds of work per 15 s clip, and x real time.

    .venv/bin/python bench/audio.py        # 8 clips of 15 s -> a table, bench/results/audio.json
    .venv/bin/python bench/audio.py --clips 4 --no-pyin

Clips: speech from the synthetic generator (personality/synthetic.py, 4 voices), muxed as AAC 16 kHz mono
beside a 320x240 25 fps H.264 picture (the size ingest makes), plus the real LibriVox speech of
../shared/fixtures looped to 15 s when present. The process is pinned to one CPU and every thread
pool to one thread. Reported:
  - per step (in-process after one warm-up; best of --repeats per clip, median over clips):
    decode+resample, features, functionals+row;
  - the whole stage, `stages.audio.run` with base.workers=1 (manifest read, every clip, Parquet
    shards), best of --repeats runs: wall time per clip, without and with the one-off warm-up;
  - pYIN instead of YIN (features only), at the default 40 ms pyin hop and at 10 ms.
Goal (issue 4): at least 100x real time per core for the whole stage.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stages import audio  # noqa: E402
from personality.common import BaseParams, write_artifact  # noqa: E402
from personality.video_io import mux_mono_audio  # noqa: E402

SR = 16000
FIXTURE = Path(os.environ.get("PERSONALITY_FIXTURES", REPO.parent / "shared" / "fixtures"))


def write_clip(path: Path, y: np.ndarray, seconds: float, fps: int = 25) -> None:
    """y as AAC mono 16 kHz beside a moving 320x240 H.264 gradient (libx264 veryfast)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=Fraction(fps),
                               options={"preset": "veryfast", "crf": "23", "threads": "1"})
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        astream = out.add_stream("aac", rate=SR, layout="mono")
        astream.bit_rate = 64000
        ramp = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None]
        for i in range(int(seconds * fps)):
            img = np.broadcast_to((ramp + 4 * i) % 256, (240, 320, 3)).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        mux_mono_audio(out, astream, y, SR)


def make_clips(root: Path, n: int, seconds: float) -> list[str]:
    from personality import synthetic as syn

    videos = root / "data" / "videos"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(4)
    ids = []
    wav = FIXTURE / "librivox_speech_16k.wav"
    for i in range(n):
        vid = f"bench_{i:02d}"
        if i == 0 and wav.exists():
            import soundfile as sf

            y, _ = sf.read(wav, dtype="float32")
            y = np.tile(y, int(np.ceil(seconds * SR / len(y))))[: int(seconds * SR)]
            vid = "librivox"
        else:
            cue = {c: float(rng.normal()) for c in syn.VOCAL_CUES}
            pitch = (105.0, 125.0, 190.0, 215.0)[i % 4]
            y, _ = syn.synthesize_speech(rng, cue, seconds, SR, pitch)
        write_clip(videos / f"{vid}.mp4", y, seconds)
        ids.append(vid)
    manifest = pd.DataFrame({
        "video_id": ids, "path": [f"data/videos/{v}.mp4" for v in ids], "split": "train",
        "subject_id": ids, "dataset": "bench", **{t: 0.5 for t in "OCEAN"},
        "duration_s": seconds, "fps": 25.0, "has_audio": True})
    write_artifact("manifest", manifest, path=root / "data" / "manifest.parquet")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=3, help="whole-stage runs; the best counts")
    ap.add_argument("--no-pyin", action="store_true", help="skip the pYIN comparison")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "audio.json"))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    p = audio.AudioParams(max_seconds=args.seconds)

    with tempfile.TemporaryDirectory(prefix="bench_audio_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        ids = make_clips(root, args.clips, args.seconds)
        print(f"made {len(ids)} clips of {args.seconds:g} s in {time.perf_counter() - t0:.1f} s")
        paths = [root / "data" / "videos" / f"{v}.mp4" for v in ids]

        warm = audio.warm_up(p)  # numba cache load, librosa import: once per worker
        steps = []  # per clip, the best of --repeats, then the median over clips
        for vid, path in zip(ids, paths):
            best: dict[str, float] = {}
            for _ in range(args.repeats):
                timings: dict[str, float] = {}
                row = audio.process_video(vid, path, p, timings)
                assert row["error"] == "" and not row["silent"], row["error"]
                best = {k: min(v, best.get(k, v)) for k, v in timings.items()}
            steps.append(best)
        step = {k: float(np.median([s[k] for s in steps])) for k in steps[0]}

        walls = []
        for _ in range(args.repeats):  # best of: other processes share this machine's cores
            rewarm = audio.warm_up(p)  # what run()'s own warm-up costs once the cache is loaded
            t0 = time.perf_counter()
            summary = audio.run(p, BaseParams(workers=1), root=root)
            walls.append(time.perf_counter() - t0 - rewarm)
        stage_wall = min(walls)
        assert summary["n_errors"] == 0
        shard_mb = sum(f.stat().st_size for f in (root / "data" / "audio").glob("*.parquet")) / 1e6

        pyin = {}
        if not args.no_pyin:
            y = audio.decode_audio(paths[0], sr=SR, max_seconds=args.seconds)
            for hop in (0.04, 0.01):
                q = dataclasses.replace(p, f0_method="pyin", pyin_hop_s=hop)
                audio.frame_features(y[:SR], q)  # its own JIT / cache load
                t0 = time.perf_counter()
                audio.frame_features(y, q)
                pyin[f"pyin_hop_{hop:g}s"] = time.perf_counter() - t0

    n = len(ids)
    per_clip = stage_wall / n
    rows = [
        ("decode + resample (PyAV)", step["decode"]),
        ("features (librosa, yin + voicing)", step["features"]),
        ("functionals + row", step["row"]),
        ("process_video total", step["total"]),
        ("whole stage, per clip (warm-up excluded)", per_clip),
        (f"whole stage, per clip (+ warm-up over {n} clips)", (stage_wall + warm) / n),
        *((f"features with {k.replace('_', ' ')}", v) for k, v in pyin.items()),
    ]
    print(f"\naudio stage, one core, {n} clips of {args.seconds:g} s "
          f"(warm-up once per worker: {warm:.2f} s)")
    print(f"{'step':45s} {'ms/clip':>9s} {'x real time':>12s}")
    for name, sec in rows:
        print(f"{name:45s} {sec * 1000:9.1f} {args.seconds / sec:12.0f}")
    print(f"Parquet: {shard_mb / n:.2f} MB per clip")
    goal = args.seconds / per_clip >= 100
    print(f"goal >= 100x real time per core: {'met' if goal else 'NOT met'} "
          f"({args.seconds / per_clip:.0f}x)")
    result = {
        "clips": n, "clip_seconds": args.seconds, "cores": 1, "warm_up_s": warm,
        "steps_ms": {k: v * 1000 for k, v in step.items()},
        "stage_wall_s": stage_wall, "stage_walls_s": walls, "stage_summary": summary,
        "stage_ms_per_clip": per_clip * 1000,
        "stage_x_real_time": args.seconds / per_clip,
        "pyin_features_ms": {k: v * 1000 for k, v in pyin.items()},
        "parquet_mb_per_clip": shard_mb / n, "goal_met": goal,
        "params": dataclasses.asdict(p),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or
                    platform.machine(), "load_avg": os.getloadavg()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
