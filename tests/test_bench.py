"""The benchmarks still run: bench/frontend.py's timing of our front-end on the real talking-head
fixture (a few seconds; the benchmark itself runs on a 15 s 720p clip and is not timed here). It
runs in a child process: the bench pins every library to one thread for the process it runs in."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("frontend", sys.argv[1])
frontend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontend)
print(json.dumps(frontend.bench_ours(frontend.Path(sys.argv[2]), fps=8.0)))
"""


def test_frontend_bench_times_every_stage_of_ours_on_a_real_clip():
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "bench" / "frontend.py"),
                           str(ROOT / "tests" / "fixtures" / "single_face.mp4")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["sampled_frames"] > 10 and out["face_rate"] > 0.9
    assert set(out["seconds"]) >= {"frames", "faces", "aus", "total"}
    assert out["real_time_factor"] > 0
    per_frame = out["faces_ms_per_frame"]  # where a faces frame's time goes
    assert set(per_frame) == {"landmarker", "blazeface", "jpeg_decode", "bgr_to_rgb",
                              "crop_and_encode"} and all(v > 0 for v in per_frame.values())
    # the ceiling is computed (a positive rate), not compared with the measured one: two timings
    # of one short clip swap order when the machine is busy (CI at 47f1e69: 31.3 vs 34.1)
    assert out["ceiling_real_time_factor"]["value"] > 0


def load_pipeline_bench():
    return load_bench("pipeline")


def test_pipeline_bench_times_each_stage_and_groups_them_as_the_readme():
    """bench/pipeline.py's accounting (the run itself, a whole `dvc repro`, is not run here):
    a stage lasts until the next one is announced, the last until the end."""
    bench = load_pipeline_bench()
    assert bench.RUNNING.search("Running stage 'train@perfex_cnn':").group(1) == "train@perfex_cnn"
    events = [(0.0, "inputs"), (2.0, "ingest"), (70.0, "faces"), (150.0, "train@perfex_cnn"),
              (180.0, "train@functionals_gbt"), (200.0, "retrain"), (250.0, "register"),
              (270.0, "explain"), (330.0, "plots")]
    stages = bench.stage_seconds(events, end=331.0)
    assert stages["ingest"] == 68.0 and stages["plots"] == 1.0 and sum(stages.values()) == 331.0
    assert bench.group_seconds(stages) == {"ingest": 70.0, "front-end": 80.0, "trainings": 50.0,
                                           "retrain": 50.0, "deploy + evaluate + register": 20.0,
                                           "explain": 60.0, "plots": 1.0}
    # scripts/repro.py's side-by-side trainings: one event for all of them, each one's own seconds
    assert bench.announcement("Running 8 stages, 2 at a time: train@a, train@b") == \
        ("event", "train@ (side by side)")
    assert bench.announcement("Running 1 stage, 2 at a time: train@a")[1] == "train@ (side by side)"
    assert bench.announcement("train@perfex_cnn: ran (33 s)") == ("lane", "train@perfex_cnn 33")
    assert bench.announcement("train@perfex_cnn: up to date (2 s)") is None
    twice = bench.stage_seconds([(0.0, "inputs"), (1.0, "ingest"), (5.0, "inputs")], end=6.0)
    assert twice == {"inputs": 2.0, "ingest": 4.0}  # inputs runs in steps 1 and 3: summed


def test_interval_coverage_bench_runs_every_law_and_checks_itself_against_the_stage(tmp_path):
    """A tiny run (5 splits, 50 resamples): every law gives every cell, and the first split of
    each cell has checked the bench's vectorised CCC and MAE, and the bootstrap-t intervals of
    the mean CCC and mean MAE from its vectorised within-resample values, against models.bootstrap's (assertions inside the
    bench, with unequal clip counts under "uneven")."""
    out = tmp_path / "coverage.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "interval_coverage.py"),
                           "--splits", "5", "--boot", "50", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    laws = ["equal", "uneven", "heavy", "uneven_heavy"]
    assert result["settings"]["laws"] == laws
    # 4 truths x 2 subject counts x (2 CCC statistics x 6 methods + MAE x 5 methods), per law
    assert [sum(r["law"] == law for r in result["coverage"]) for law in laws] == [136] * 4
    assert all(0 <= r["coverage"] <= 1 for r in result["coverage"])
    assert len(result["equal_models"]) == 4 * 2 * 5
    assert out.with_suffix(".png").stat().st_size > 10_000  # the coverage plot


def test_predict_bench_stops_on_a_score_that_is_not_the_pipelines(tmp_path):
    """bench/predict.py times predict only on scores equal to the pipeline's (a faster row must
    not be a different number); the timing itself needs the default data and is not run here."""
    import pandas as pd
    import pytest

    bench = load_bench("predict")
    (tmp_path / "data" / "predictions").mkdir(parents=True)
    pipeline = pd.DataFrame([{"video_id": "v1", "O": 0.5, "C": 0.4, "E": 0.3, "A": 0.2, "N": 0.1}])
    pipeline.to_parquet(tmp_path / "data" / "predictions" / "m.parquet")
    same = {"v1": {"O": 0.50004, "C": 0.4, "E": 0.3, "A": 0.2, "N": 0.1}}
    assert bench.check_pipeline(same, {"v1": "m"}, root=tmp_path) == 1
    with pytest.raises(SystemExit, match="v1 O: predict 0.500200 != pipeline 0.500000"):
        bench.check_pipeline({"v1": {**same["v1"], "O": 0.5002}}, {"v1": "m"}, root=tmp_path)


def test_readmes_slurm_recipe_runs_its_job_script_and_gives_the_local_pools_bytes(tmp_path):
    """bench/cluster_jobqueue.py: README's SLURMCluster writes its job script, bash runs it as
    sbatch would on a node (bare environment: the prologue alone makes the project importable),
    and the frames, faces and audio stages through that cluster write the local pool's bytes."""
    out = tmp_path / "jobqueue.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster_jobqueue.py"),
                           "--videos", "4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["same_bytes"] is True and result["workers_joined_s"] >= 0
    script = result["job_script"]
    assert f"cd {ROOT}\nexport PYTHONPATH=$PWD\nsource .venv/bin/activate\n" in script
    assert "--nthreads 1" in script and "--nworkers 2" in script
    assert "same bytes" in done.stdout
