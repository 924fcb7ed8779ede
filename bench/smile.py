"""Cost of each audio feature set (librosa, egemaps, compare) per clip, on one core.

    .venv/bin/python bench/smile.py                 # the clips of data/clips.parquet (the 150
                                                    # default clips after `dvc checkout`)
    .venv/bin/python bench/smile.py --clips 20 --sets librosa egemaps

Each clip goes through `stages.audio.process_video` once with every set asked for, so the sets
share one decode (as in the stage) and the per-step timings split the cost: decode + resample
(shared), librosa (per-window features + functionals and the row), each openSMILE set
(`Smile.process_signal` on the decoded wave). Reported per step: mean and median seconds per clip
and x real time (seconds of audio / seconds of work), plus the one-off set-up per worker
(extractors built, numba cache loaded). The process is pinned to one CPU and every thread pool to
one thread; the machine may be shared, so the load average is printed beside the figures.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from personality.common import progress  # noqa: E402
from stages import audio  # noqa: E402


def measure(paths: list[tuple[str, Path]], p: audio.AudioParams) -> tuple[pd.DataFrame, float]:
    """Per clip: seconds of audio and of each step -> a table (clips x steps); set-up seconds."""
    t0 = time.perf_counter()
    audio.warm_up(p)  # builds the extractors and loads numba's cache: once per worker
    setup = time.perf_counter() - t0
    rows = []
    for vid, path in progress(paths, desc="bench smile", unit="clip"):
        timings: dict[str, float] = {}
        row = audio.process_video(vid, path, p, timings)
        if row["error"] or row["silent"] or not row["has_audio"]:
            continue  # no features computed: no cost to measure
        timings["librosa"] = timings.pop("features") + timings.pop("row")
        rows.append({"video_id": vid, "audio_s": row["duration_s"], **timings})
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
    steps = [s for s in ("decode", "librosa", "egemaps", "compare") if s in table]
    audio_s = table["audio_s"]
    print(f"\n{len(table)} clips, {audio_s.mean():.2f} s of audio each on average; one core; "
          f"set-up once per worker {setup:.2f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':10s} {'mean s/clip':>12s} {'median':>9s} {'x real time':>12s}")
    result = {"clips": len(table), "mean_audio_s": float(audio_s.mean()), "setup_s": setup,
              "sets": list(args.sets), "load_avg": os.getloadavg(), "steps": {}}
    for step in steps:
        mean, median = float(table[step].mean()), float(table[step].median())
        speed = float(audio_s.sum() / table[step].sum())
        print(f"{step:10s} {mean:12.4f} {median:9.4f} {speed:12.0f}")
        result["steps"][step] = {"mean_s": mean, "median_s": median, "x_real_time": speed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
