"""predict's batch pool when a worker process dies (kill -9, the OOM killer, a decoder segfault):
only the video that kills its worker fails, named, and every other video is scored; a killed
predict (SIGTERM) leaves no work folder, and one a dead process left is swept."""
from __future__ import annotations

import os
import signal
import time

import pandas as pd

from stages import predict
from stages.predict_batch import WorkerDied, run_jobs

KILLER = "killer.mp4"


def _die_on_killer(video, *rest):
    """A worker function double: the video named KILLER kills its process, as a segfault would."""
    if os.path.basename(str(video)) == KILLER:
        os._exit(9)
    time.sleep(0.2)  # long enough for the pool to have the other jobs in flight
    return f"scored {video}"


def _failed(job, exc):
    return f"failed {job[0]}: {exc}"


def test_a_dead_worker_fails_only_its_own_job():
    jobs = [(name,) for name in ("a.mp4", "b.mp4", KILLER, "c.mp4", "d.mp4", "e.mp4")]
    results = dict(run_jobs(_die_on_killer, jobs, workers=2, failed=_failed))
    assert sorted(results) == list(range(len(jobs)))  # every job once
    failed = {i: r for i, r in results.items() if r.startswith("failed")}
    assert list(failed) == [2]
    assert "its worker process died (killed or crashed) while scoring it" in failed[2]
    assert all(results[i] == f"scored {jobs[i][0]}" for i in results if i != 2)


def _score_row_double(video, report, *rest):
    """predict.score_row's double: dies on KILLER, else a scored row."""
    _die_on_killer(video)
    return {"video": str(video), "video_id": report.stem, "report": "", "error": "",
            **{t: 0.5 for t in "OCEAN"}, "model": "double"}


def _no_init() -> None:
    """predict._init_worker's double: the doubles need no torch (keeps each spawn quick)."""


def test_batch_names_the_video_whose_worker_died(tmp_path, monkeypatch):
    videos = [tmp_path / n for n in ("a.mp4", "b.mp4", KILLER, "c.mp4")]
    monkeypatch.setattr(predict, "score_row", _score_row_double)
    monkeypatch.setattr(predict, "_init_worker", _no_init)
    predict.predict_batch(videos, tmp_path / "out", workers=2)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    failed = table[table["error"] != ""]
    assert list(failed["video_id"]) == ["killer"]
    assert failed["error"].iloc[0] == (f"{tmp_path / KILLER}: its worker process died "
                                       "(killed or crashed) while scoring it")
    assert (table[table["error"] == ""]["model"] == "double").all() and len(table) == 4


def test_sweep_removes_only_dead_processes_work_folders(tmp_path):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{predict.WORK_PREFIX}{gone.stdout.strip()}-abc"
    mine = tmp_path / f"{predict.WORK_PREFIX}{os.getpid()}-abc"
    other = tmp_path / "tmp-someone-else"
    recent = tmp_path / f"{predict.WORK_PREFIX}{gone.stdout.strip()}-new"
    for folder in (dead, mine, other, recent):
        (folder / "data").mkdir(parents=True)
    hour_ago = time.time() - 3700
    for folder in (dead, mine, other):  # an hour idle; `recent` was just written
        for path in (folder / "data", folder):
            os.utime(path, (hour_ago, hour_ago))
    predict.sweep_dead_work(tmp_path)
    assert not dead.exists() and mine.exists() and other.exists()
    assert recent.exists()  # its pid is gone, but it is busy: maybe another namespace's process


def test_main_restores_the_previous_sigterm_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert predict.main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_removes_the_work_folder(tmp_path):
    """A predict killed with SIGTERM mid-front-end exits cleanly (143): its temp work folder
    (frames, face crops) is gone and nothing was written to --out."""
    import subprocess
    import sys

    from models.engine import save_checkpoint
    from models.registry import build_model
    from tests.conftest import REPO, real_fixture

    ckpt = save_checkpoint(tmp_path / "perfex_cnn" / "best.pt", model=build_model("perfex_cnn"),
                           model_name="perfex_cnn", train_mean=[0.5] * 5,
                           inputs=["aus", "aus_mask"])
    work = tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "stages.predict",
                             str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "o"),
                             "--model", str(ckpt)], cwd=REPO,
                            env={**os.environ, "TMPDIR": str(work)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob(predict.WORK_PREFIX + "*/data/*")):  # the front-end began
            assert proc.poll() is None and time.monotonic() < deadline, "no work folder"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not list(work.glob(predict.WORK_PREFIX + "*"))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
