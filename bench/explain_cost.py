"""What predict's explanations cost: seconds of `explain_clip` per model on one clip, one thread.

    .venv/bin/python bench/explain_cost.py                       # the longest default clip
    .venv/bin/python bench/explain_cost.py --video data/videos/syn_0001.mp4 --models logmel_cnn

Runs predict's front-end (frames, faces, aus, audio, functionals: stages.predict.run_front_end)
once on the clip, then for every trained model of data/models (or --models) builds its sources
from its checkpoint as predict does and times `models.explain.explain_clip` (best of --repeats),
beside the model's plain prediction (models.engine.predict_videos). Prints a table and writes
bench/results/explain_cost.json. models/explain.py quotes its figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    from models.data import build_sources, for_inference
    from models.engine import load_checkpoint, predict_videos
    from models.explain import explain_clip
    from stages.predict import run_front_end, trained_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    video = args.video
    if video is None:  # the longest clip of the manifest
        m = pd.read_parquet(ROOT / "data" / "manifest.parquet")
        video = ROOT / m.sort_values("duration_s").iloc[-1]["path"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        facts = run_front_end(Path(video), Path(tmp))
        vid = facts["video_id"]
        for name in args.models or [n for n in trained_models(ROOT) if "+" not in n]:
            net, ckpt = load_checkpoint(ROOT / "data" / "models" / name / "best.pt")
            sources = build_sources(sorted(ckpt.get("inputs", [])), root=Path(tmp),
                                    video_ids=[vid], config=for_inference(ckpt.get("source_config")))
            out = {}
            explain_s = _best(lambda: out.update(e=explain_clip(net, sources, vid)[0]),
                              args.repeats)
            predict_s = _best(lambda: predict_videos(net, sources, [vid]), args.repeats)
            rows.append({"model": name, "kinds": "+".join(out["e"]["kinds"]),
                         "explain_s": round(explain_s, 3), "predict_s": round(predict_s, 3)})
            print(rows[-1], flush=True)
    result = {"video": str(video), "duration_s": facts.get("duration_s"), "threads": 1,
              "rows": rows}
    out_path = ROOT / "bench" / "results" / "explain_cost.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{video} ({facts.get('duration_s', np.nan):.1f} s)")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
