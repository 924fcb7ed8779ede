"""The benchmarks still run: bench/frontend.py's timing of our front-end on the real talking-head
fixture (a few seconds; the benchmark itself runs on a 15 s 720p clip and is not timed here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontend_bench_times_every_stage_of_ours_on_a_real_clip():
    frontend = _load("frontend")
    out = frontend.bench_ours(ROOT / "tests" / "fixtures" / "single_face.mp4", fps=8.0)
    assert out["sampled_frames"] > 10 and out["face_rate"] > 0.9
    assert set(out["seconds"]) >= {"frames", "faces", "aus", "total"}
    assert out["real_time_factor"] > 0
