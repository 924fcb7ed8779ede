"""Real stages on the executor: the same bytes whatever runs them, a worker killed mid-stage costs
the local pool nothing (the video runs again) and fails a Dask run fast naming the video, and a
killed stage leaves no worker and no temp folder behind.

    pytest tests/test_executor_stages.py          # ~3-4 minutes on 2 cores

Kill tests run the frames stage in a subprocess on a few copies of one 40 s clip (long enough that
a worker is mid-video when it is killed); `ps` finds its workers (spawned children).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from personality.common import BaseParams, atomic_dir

REPO = Path(__file__).resolve().parents[1]


def tree_md5(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# same bytes


def run_front_end(src: Path, dst: Path, workers: int) -> dict[str, dict[str, str]]:
    from stages import audio, faces, frames

    (dst / "data").mkdir(parents=True)
    shutil.copy(src / "data" / "clips.parquet", dst / "data")
    shutil.copytree(src / "data" / "videos", dst / "data" / "videos")
    base = BaseParams(workers=workers)
    frames.run(frames.FramesParams(fps=5), base, root=dst)
    faces.run(faces.FacesParams(), base, root=dst)
    audio.run(audio.AudioParams(), base, root=dst)
    return {name: tree_md5(dst / "data" / name) for name in ("frames", "faces", "audio")}


def test_same_bytes_with_one_two_workers_and_dask(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("PERSONALITY_CLUSTER", raising=False)
    one = run_front_end(tiny_dataset, tmp_path / "one", workers=1)
    two = run_front_end(tiny_dataset, tmp_path / "two", workers=2)
    monkeypatch.setenv("PERSONALITY_CLUSTER", "local:2")
    dask = run_front_end(tiny_dataset, tmp_path / "dask", workers=1)
    assert all(one[name] for name in one)  # something was written
    assert one == two == dask


# --------------------------------------------------------------------------------------------------
# kills

# The stage's first line gives SIGINT its default meaning (KeyboardInterrupt): a test run started
# in the background by a non-interactive shell inherits SIGINT *ignored*, and the pool-INT case
# then saw a stage that ran to the end (a fresh-clone `make test &` did, 2026-12-02).
STAGE = textwrap.dedent("""
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import sys
    from pathlib import Path
    from personality.common import BaseParams
    from stages.frames import FramesParams, run
    run(FramesParams(fps=25, max_side=640), BaseParams(workers=2), root=Path(sys.argv[1]))
""")


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> Path:
    """A root with data/clips.parquet listing 6 copies (v0..v5) of one 40 s 640x480 clip: each
    worker has ~3 videos (~9 s of CPU) to do, the tests strike after ~2 s of it."""
    from tests.conftest import write_video

    root = tmp_path_factory.mktemp("long")
    video = write_video(root / "data" / "videos" / "long.mp4", n_frames=1000, audio=False,
                        size=(640, 480))
    pd.DataFrame({"video_id": [f"v{i}" for i in range(6)], "path": [str(video)] * 6,
                  "dataset": "test", "duration_s": 40.0, "fps": 25.0, "has_audio": False,
                  "source_stat": ""}
                 ).to_parquet(root / "data" / "clips.parquet")
    return root


def _cmdline(process: psutil.Process) -> list[str]:
    """Its command line; [] for a child that ended between the listing and this call (a
    short-lived helper of Dask or multiprocessing: a zombie or gone)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def start_stage(root: Path, cluster: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """The frames stage in a subprocess; returns it and its workers once they are busy."""
    env = {**os.environ, "PERSONALITY_CLUSTER": cluster, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", STAGE, str(root)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(_cmdline(c))]
        if len(workers) == 2 and all(w.cpu_times().user > 2.0 for w in workers):
            assert proc.poll() is None
            return proc, workers  # both past start-up (imports, ~1.5 s) and into a video
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the stage's workers did not start")


@pytest.fixture
def no_output_yet(long_clips):
    """Each kill test starts with no data/frames (one that failed must not fail the next)."""
    shutil.rmtree(long_clips / "data" / "frames", ignore_errors=True)


@pytest.mark.parametrize("cluster", ["", "local:2"], ids=["pool", "dask"])
@pytest.mark.usefixtures("no_output_yet")
def test_a_worker_killed_mid_stage_costs_the_stage_nothing(long_clips, cluster):
    """The local pool restarts (a LocalCluster's Nanny restarts the worker) and the videos it
    held get another try: every video is there."""
    root = long_clips
    proc, workers = start_stage(root, cluster)
    workers[0].kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    frames = pd.read_parquet(root / "data" / "frames")
    assert sorted(frames["video_id"].unique()) == [f"v{i}" for i in range(6)]
    assert not list((root / "data").glob(".frames.tmp-*"))
    shutil.rmtree(root / "data" / "frames")


@pytest.mark.parametrize("cluster, sig", [("", signal.SIGTERM), ("", signal.SIGINT),
                                          ("", signal.SIGKILL), ("local:2", signal.SIGKILL),
                                          ("local:2", signal.SIGTERM)],
                         ids=["pool-TERM", "pool-INT", "pool-KILL", "dask-KILL", "dask-TERM"])
@pytest.mark.usefixtures("no_output_yet")
def test_killing_the_stage_leaves_no_orphan_and_no_temp(long_clips, cluster, sig):
    root = long_clips
    proc, workers = start_stage(root, cluster)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"{len(alive)} worker(s) still alive 5 s after {sig.name} of the stage"
    # a SIGKILLed writer leaves its temp folder; the next writer in data/ sweeps it
    with atomic_dir(root / "data" / "other"):
        pass
    assert not list((root / "data").glob(".*.tmp-*"))
    assert not (root / "data" / "frames").exists()
    shutil.rmtree(root / "data" / "other")
