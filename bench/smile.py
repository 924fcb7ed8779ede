"""Cost of each audio feature set (librosa, egemaps, compare) per clip, on one core.

    .venv/bin/python bench/smile.py                 # the clips of data/clips.parquet (the 150
                                                    # default clips after `dvc checkout`)
    .venv/bin/python bench/smile.py --clips 20 --sets librosa egemaps

Each clip is decoded once (as in the stage) and every set asked for runs on that wave through
the stage's own functions: decode + resample (`decode_audio`, shared by all sets), librosa
(`frame_features` + `functionals`), each openSMILE set (`smile.all_functionals`:
`Smile.process_signal`). Reported per step: CPU seconds of this process per clip (mean, median;
CPU time, not wall, because the machine is shared and wall time grows with its load), x real time
(seconds of audio / CPU seconds), the mean wall seconds beside, and the one-off set-up per worker
(extractors built, numba cache loaded). The process is pinned to one CPU and every thread pool to
one thread.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from personality.common import atomic_write_json, progress  # noqa: E402
from personality import smile  # noqa: E402
from stages import audio  # noqa: E402


def _timed(fn):
    """(fn(), CPU seconds of this process, wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def measure(paths: list[tuple[str, Path]], p: audio.AudioParams) -> tuple[pd.DataFrame, float]:
    """Per clip: seconds of audio, CPU and wall seconds of each step -> a table; set-up seconds.
    The steps are the stage's own functions, in its order, on one decoded wave per clip."""
    t0 = time.perf_counter()
    audio.warm_up(p)  # builds the extractors and loads numba's cache: once per worker
    setup = time.perf_counter() - t0
    exs = smile.extractors(p.smile_sets)
    rows = []
    for vid, path in progress(paths, desc="bench smile", unit="clip"):
        y, cpu, wall = _timed(lambda: audio.decode_audio(path, sr=p.sr,
                                                         max_seconds=p.max_feature_seconds))
        row = {"video_id": vid, "audio_s": len(y) / p.sr, "decode_cpu": cpu, "decode_wall": wall}
        if p.librosa:
            _, cpu, wall = _timed(lambda: audio.functionals(audio.frame_features(y, p), p))
            row.update(librosa_cpu=cpu, librosa_wall=wall)
        for name, ex in exs.items():
            _, cpu, wall = _timed(lambda: smile.all_functionals(y, p.sr, {name: ex}))
            row.update({f"{name}_cpu": cpu, f"{name}_wall": wall})
        rows.append(row)
    return pd.DataFrame(rows), setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=0, help="first N clips (0: all)")
    ap.add_argument("--sets", nargs="+", default=["librosa", "egemaps", "compare"])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "smile.json"))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    clips = pd.read_parquet(REPO / "data" / "clips.parquet", columns=["video_id", "path"])
    if args.clips:
        clips = clips.head(args.clips)
    paths = [(v, REPO / rel) for v, rel in zip(clips["video_id"], clips["path"])]
    p = dataclasses.replace(audio.AudioParams(), feature_sets=list(args.sets)).validate()
    table, setup = measure(paths, p)
    steps = [s for s in ("decode", "librosa", "egemaps", "compare") if f"{s}_cpu" in table]
    audio_s = table["audio_s"]
    print(f"\n{len(table)} clips, {audio_s.mean():.2f} s of audio each on average; one core; "
          f"set-up once per worker {setup:.2f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':10s} {'CPU s/clip':>11s} {'median':>8s} {'x real time':>12s} "
          f"{'wall s/clip':>12s}")
    result = {"clips": len(table), "mean_audio_s": float(audio_s.mean()), "setup_s": setup,
              "sets": list(args.sets), "load_avg": os.getloadavg(), "steps": {}}
    for step in steps:
        cpu, wall = table[f"{step}_cpu"], table[f"{step}_wall"]
        speed = float(audio_s.sum() / cpu.sum())
        print(f"{step:10s} {cpu.mean():11.4f} {cpu.median():8.4f} {speed:12.0f} "
              f"{wall.mean():12.4f}")
        result["steps"][step] = {"cpu_mean_s": float(cpu.mean()),
                                 "cpu_median_s": float(cpu.median()),
                                 "wall_mean_s": float(wall.mean()), "x_real_time_cpu": speed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {atomic_write_json(args.out, result)}")


if __name__ == "__main__":
    main()
