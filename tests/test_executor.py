"""The per-video executor: placement from PERSONALITY_CLUSTER, results in job order, set-up once
per worker, a dead worker named, no orphan worker and no stale temp folder after a kill.

    pytest tests/test_executor.py

Stage-level checks (same bytes with 1, 2 local workers and a Dask LocalCluster; a worker killed
mid-stage) run real stages in subprocesses; they take about a minute.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from personality.common import atomic_dir
from personality.executor import (ExecutorError, Placement, local_processes, map_jobs,
                                  placement)

REPO = Path(__file__).resolve().parents[1]
POOL = Placement("pool", 2)
DASK = Placement("dask", 2)


# --------------------------------------------------------------------------------------------------
# jobs (module level: workers import them by name)

_SETUPS = 0


def count_setup(tag: str) -> None:
    global _SETUPS
    assert tag == "rigs"
    _SETUPS += 1


def square_slowly(x: int) -> tuple[int, int, int, str | None]:
    time.sleep(0.05 * (5 - x % 5))  # early jobs finish last: order must still hold
    return x * x, os.getpid(), _SETUPS, os.environ.get("OMP_NUM_THREADS")


def die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-job (OOM killer, native crash)
    time.sleep(0.2)
    return x


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad input {x}")
    return x


# --------------------------------------------------------------------------------------------------
# placement


@pytest.mark.parametrize("setting, workers, expected", [
    ("", 1, Placement("inline", 1)),
    ("", 4, Placement("pool", 4)),
    ("  ", 3, Placement("pool", 3)),
    ("local:2", 8, Placement("dask", 2)),
    ("tcp://head:8786", 2, Placement("dask", 0, "tcp://head:8786")),
])
def test_placement_reads_the_setting(setting, workers, expected):
    assert placement(workers, setting) == expected


@pytest.mark.parametrize("bad", ["local:0", "local", "head:8786", "slurm", "local:-1"])
def test_a_bad_setting_is_quoted(bad):
    with pytest.raises(ExecutorError, match=repr(bad).replace("(", r"\(")):
        placement(2, bad)


def test_the_environment_variable_decides(monkeypatch):
    monkeypatch.setenv("PERSONALITY_CLUSTER", "local:3")
    assert placement(1) == Placement("dask", 3)
    monkeypatch.delenv("PERSONALITY_CLUSTER")
    assert placement(2) == Placement("pool", 2)


def test_whole_model_jobs_stay_local_within_the_cores(monkeypatch):
    """Fine-tunings and explanations read this repository's data/: never a Dask cluster, and
    no more processes than the cores allow at each job's torch threads."""
    monkeypatch.setenv("PERSONALITY_CLUSTER", "tcp://head:8786")
    assert local_processes(2, workers=2) == Placement("pool", 2)
    assert local_processes(5, workers=2, threads_per_job=2) == Placement("inline", 1)
    assert local_processes(1, workers=4) == Placement("inline", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert local_processes(3, workers=8, threads_per_job=0) == Placement("inline", 1)


# --------------------------------------------------------------------------------------------------
# order, set-up, errors


@pytest.mark.parametrize("where", [Placement("inline", 1), POOL, DASK], ids=["inline", "pool", "dask"])
def test_results_in_job_order_setup_once_per_worker(where):
    out = list(map_jobs(square_slowly, range(10), workers=2, setup=count_setup,
                        setup_args=("rigs",), where=where))
    assert [r[0] for r in out] == [x * x for x in range(10)]
    assert {r[2] for r in out} == {1}  # every process set up exactly once
    if where.kind != "inline":
        assert len({r[1] for r in out}) == 2 and os.getpid() not in {r[1] for r in out}
        assert {r[3] for r in out} == {"1"}  # one thread per worker


@pytest.mark.parametrize("where", [Placement("inline", 1), POOL, DASK], ids=["inline", "pool", "dask"])
def test_a_jobs_own_error_arrives_unchanged_and_names_the_job(where):
    with pytest.raises(ValueError, match="bad input 2") as info:
        list(map_jobs(fail_on_two, range(5), workers=2, label=lambda x: f"clip{x}", where=where))
    assert any("clip2" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("where", [POOL, DASK], ids=["pool", "dask"])
def test_a_dead_worker_fails_fast_naming_its_job(where):
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match=r"(clip\d or )?clip3( or clip\d)?: the (Dask )?worker") as info:
        list(map_jobs(die_on_three, range(8), workers=2, label=lambda x: f"clip{x}", where=where))
    assert time.monotonic() - t0 < 30
    if where.kind == "pool":
        assert "SIGKILL" in str(info.value)


# --------------------------------------------------------------------------------------------------
# temp folders


def test_a_stale_temp_of_a_dead_writer_is_swept_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".audio.tmp-{int(dead.stdout)}-0123abcd"  # its writer is gone
    live = tmp_path / f".faces.tmp-{os.getppid()}-0123abcd"  # its writer still runs
    foreign = tmp_path / ".notes.tmp-keep"  # not ours
    for folder in (stale, live, foreign):
        folder.mkdir()
    with atomic_dir(tmp_path / "frames") as tmp:
        (tmp / "part-00000.parquet").write_bytes(b"x")
    assert not stale.exists() and live.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".frames")) == []


# --------------------------------------------------------------------------------------------------
# a stage runs as `python -m stages.X`: its functions live in __main__

MODULE = """
from personality.executor import map_jobs

_STATE = None


def setup(value):
    global _STATE
    _STATE = value


def work(x):
    assert _STATE is not None, "worker not initialised"
    return x + _STATE


if __name__ == "__main__":
    print(list(map_jobs(work, range(4), workers=2, setup=setup, setup_args=(10,))))
"""


@pytest.mark.parametrize("cluster", ["", "local:2"], ids=["pool", "dask"])
def test_worker_state_reaches_jobs_of_a_module_run_with_dash_m(tmp_path, cluster):
    (tmp_path / "stagepkg").mkdir()
    (tmp_path / "stagepkg" / "__init__.py").write_text("")
    (tmp_path / "stagepkg" / "job.py").write_text(MODULE)
    env = {**os.environ, "PERSONALITY_CLUSTER": cluster,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "stagepkg.job"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[10, 11, 12, 13]"


def progress_lock_is_private(_job) -> bool:
    import threading

    from tqdm import tqdm

    return isinstance(tqdm.get_lock(), type(threading.RLock()))


def test_workers_lock_their_progress_bars_with_a_thread_lock():
    """tqdm's default lock holds a multiprocessing semaphore: a pool worker that drew a model's
    epochs with it left the semaphore behind, and Python warned of 'leaked semaphore objects'
    when the retrain stage exited."""
    assert list(map_jobs(progress_lock_is_private, range(2), workers=2, where=POOL)) == [True] * 2
