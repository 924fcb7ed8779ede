"""Benchmark `predict` on the default data's test clips: what a user waits for one clip, and what
a batch costs per clip.

    .venv/bin/python bench/predict.py              # a table, bench/results/predict.json
    .venv/bin/python bench/predict.py --clips 4 --repeats 1

Needs the default data (`dvc repro`: data/videos/ and a trained model). The clips are the first
--clips test videos of data/manifest.parquet (synthetic talking heads, 320x240, 6-10 s, with
speech). Rows, each the best of --repeats (other processes share this machine's cores):
  - cold: `python -m stages.predict CLIP --out DIR` as a user runs it (interpreter start, imports,
    the front-end's worker, the model, the explanation, the report), median over the clips;
  - warm: predict_video + write_outputs in this process after one clip warmed it (what
    `stages.serve` pays per request), median over the clips, and the front-end's share of it;
  - batch: `python -m stages.predict CLIPS... --out DIR --jobs N` for N = 1 and 2: wall time per
    clip.
Every prediction is checked to be the pipeline's own (data/predictions/<model>.parquet, to 1e-4),
so a faster row is never a different number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from personality.schemas import TRAITS  # noqa: E402


def test_clips(n: int) -> list[Path]:
    manifest = pd.read_parquet(REPO / "data" / "manifest.parquet")
    test = manifest[manifest["split"] == "test"].sort_values("video_id")
    return [REPO / p for p in test["path"].head(n)]


def cli(args: list[str]) -> float:
    """Seconds `python -m stages.predict ARGS` takes; its failure stops the bench."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stages.predict", *args], cwd=REPO,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"predict {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def check_pipeline(scores: dict[str, dict], model_of: dict[str, str], root: Path = REPO) -> int:
    """Every clip's scores against the pipeline's test predictions (root/data/predictions);
    returns how many matched, stops the bench at the first that does not."""
    for vid, row in scores.items():
        table = pd.read_parquet(root / "data" / "predictions" / f"{model_of[vid]}.parquet")
        own = table[table["video_id"] == vid]
        if own.empty:
            raise SystemExit(f"{vid}: no pipeline prediction of {model_of[vid]}")
        for t in TRAITS:
            if abs(float(own[t].iloc[0]) - row[t]) > 1e-4:
                raise SystemExit(f"{vid} {t}: predict {row[t]:.6f} != pipeline "
                                 f"{float(own[t].iloc[0]):.6f}")
    return len(scores)


def cold_rows(clips: list[Path], repeats: int, out: Path) -> dict[str, float]:
    times = []
    for clip in clips:
        times.append(min(cli([str(clip), "--out", str(out / clip.stem)])
                         for _ in range(repeats)))
    scores = {c.stem: json.loads((out / c.stem / "prediction.json").read_text()) for c in clips}
    check_pipeline(scores, {v: s["model"] for v, s in scores.items()})
    return {"cold_s_per_clip": statistics.median(times)}


def warm_rows(clips: list[Path], repeats: int, out: Path) -> dict[str, float]:
    from stages import predict

    front_end_s: list[float] = []
    timed = predict.run_front_end

    def run_front_end(*args, **kwargs):  # the front-end's own share of the wall time
        t0 = time.perf_counter()
        try:
            return timed(*args, **kwargs)
        finally:
            front_end_s.append(time.perf_counter() - t0)

    predict.run_front_end = run_front_end
    predict.write_outputs(predict.predict_video(clips[0]), out / "warm-up")
    totals, fronts = [], []
    for clip in clips:
        best = (float("inf"), 0.0)
        for _ in range(repeats):
            front_end_s.clear()
            t0 = time.perf_counter()
            result = predict.predict_video(clip)
            predict.write_outputs(result, out / f"warm-{clip.stem}")
            best = min(best, (time.perf_counter() - t0, sum(front_end_s)))
        totals.append(best[0])
        fronts.append(best[1])
    predict.run_front_end = timed
    scores = {c.stem: json.loads((out / f"warm-{c.stem}" / "prediction.json").read_text())
              for c in clips}
    check_pipeline(scores, {v: s["model"] for v, s in scores.items()})
    return {"warm_s_per_clip": statistics.median(totals),
            "warm_front_end_s_per_clip": statistics.median(fronts)}


def batch_rows(clips: list[Path], repeats: int, out: Path) -> dict[str, float]:
    rows = {}
    for jobs in (1, 2):
        folder = out / f"batch{jobs}"
        wall = min(cli([*map(str, clips), "--out", str(folder), "--jobs", str(jobs)])
                   for _ in range(repeats))
        table = pd.read_csv(folder / "predictions.csv")
        if table["error"].notna().any():
            raise SystemExit(f"batch --jobs {jobs}: failed rows\n{table['error']}")
        check_pipeline({Path(r.video).stem: {t: getattr(r, t) for t in TRAITS}
                        for r in table.itertuples()},
                       {Path(r.video).stem: r.model for r in table.itertuples()})
        rows[f"batch_jobs{jobs}_s_per_clip"] = wall / len(clips)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2, help="runs per row; the best counts")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "predict.json"))
    args = ap.parse_args()
    clips = test_clips(args.clips)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        rows = {**cold_rows(clips, args.repeats, Path(tmp)),
                **warm_rows(clips, args.repeats, Path(tmp)),
                **batch_rows(clips, args.repeats, Path(tmp))}
    print(f"predict on {len(clips)} test clips of the default data "
          f"(best of {args.repeats}; every score the pipeline's to 1e-4)")
    print(f"{'row':<34}{'s per clip':>12}")
    for name, seconds in rows.items():
        print(f"{name:<34}{seconds:>12.2f}")
    report = {"clips": [c.name for c in clips], "repeats": args.repeats, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
