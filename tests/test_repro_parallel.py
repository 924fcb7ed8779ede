"""scripts/repro.py (`make run`): `dvc repro` with the train@ stages side by side.

The plan is read from the project's own dvc.yaml; the runs use a small DVC repository in a
temporary folder whose `train@<item>` stages sleep, so that side by side, a failure and a Ctrl-C
can be seen without the real pipeline (tests/test_pipeline_sources.py runs that one through
scripts/repro.py too).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import repro  # noqa: E402  (scripts/repro.py)
from tests.test_pipeline_sources import pipeline_env  # noqa: E402  (dvc and python of the venv)

WORK = '''
import json, os, sys, time
from pathlib import Path
item = sys.argv[1]
Path("marks").mkdir(exist_ok=True)
Path("marks", item).write_text(json.dumps({"pid": os.getpid(), "start": time.time()}))
if Path("broken", item).exists():
    sys.exit(f"{item} is broken")
start = time.time()
together = os.environ.get("TOGETHER", "").split(",")  # these wait for each other's start
while item in together and not all(Path("marks", o).exists() for o in together) \
        and time.time() - start < 60:
    time.sleep(0.05)
time.sleep(float(os.environ.get("WORK_SECONDS", "2")))
Path("out").mkdir(exist_ok=True)
tmp = Path("out", f".{item}.tmp")
tmp.write_text(json.dumps({"start": start, "end": time.time()}))
tmp.replace(Path("out", f"{item}.json"))
'''

DVC_YAML = {"stages": {
    "prep": {"cmd": "python -c \"open('prep.txt', 'w').write('x')\"", "outs": ["prep.txt"]},
    "train": {"foreach": ["a", "b", "c"], "do": {
        "cmd": "python work.py ${item}", "deps": ["prep.txt", "work.py"],
        "outs": ["out/${item}.json"]}},
    "report": {"cmd": "python -c \"open('report.txt', 'w').write('done')\"",
               "deps": ["out/a.json", "out/b.json", "out/c.json"], "outs": ["report.txt"]}}}


@pytest.fixture
def toy_repo(tmp_path) -> Path:
    """git + DVC repository: prep -> train@a, train@b, train@c (2 s each) -> report."""
    repo = tmp_path / "toy"
    repo.mkdir()
    (repo / "work.py").write_text(WORK)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text("train:\n  threads: 1\n  mlflow: false\n")
    (repo / ".gitignore").write_text("marks/\nbroken/\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "toy"]):
        subprocess.run(cmd, cwd=repo, env=pipeline_env(), check=True, capture_output=True)
    return repo


def run_script(repo: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "repro.py"), *args], cwd=repo,
                          env={**pipeline_env(), **kwargs.pop("extra_env", {})},
                          capture_output=True, text=True, timeout=300, **kwargs)


def dvc_status(repo: Path) -> str:
    done = subprocess.run(["dvc", "status"], cwd=repo, env=pipeline_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr  # no stale lock
    return done.stdout


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for a reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_the_project_plan_runs_every_training_side_by_side_after_the_front_end():
    upstream, parallel = repro.plan(ROOT)
    models = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["models"]
    assert parallel == [f"train@{m}" for m in models]
    assert set(upstream) == {"inputs", "ingest", "audio", "frames", "faces", "aus", "augment",
                             "functionals"}


def test_longest_first_then_unknown_in_order():
    stages = ["train@a", "train@b", "train@c", "train@d"]
    assert repro.longest_first(stages, {"train@c": 60.0, "train@a": 20.0}) == \
        ["train@c", "train@a", "train@b", "train@d"]
    assert repro.longest_first(stages, {}) == stages


@pytest.mark.parametrize("threads, cores, jobs", [(1, 2, 2), (2, 2, 1), (0, 16, 1), (1, 1, 1),
                                                  (4, 16, 4), (1, 16, repro.MAX_DEFAULT_JOBS)])
def test_jobs_are_the_cores_over_the_threads_of_one_training(tmp_path, monkeypatch, threads,
                                                             cores, jobs):
    (tmp_path / "params.yaml").write_text(f"train:\n  threads: {threads}\n")
    monkeypatch.setattr(repro, "usable_cores", lambda: cores)
    assert repro.default_jobs(tmp_path) == jobs


def test_usable_cores_and_exit_codes():
    assert 1 <= repro.usable_cores() <= (os.cpu_count() or 1)
    assert repro.exit_code(-signal.SIGKILL) == 137 and repro.exit_code(3) == 3


def test_one_job_is_plain_dvc_repro(toy_repo):
    done = run_script(toy_repo, "--jobs", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "at a time" not in done.stdout and "Running stage 'train@c'" in done.stdout
    assert (toy_repo / "report.txt").read_text() == "done"


def test_trainings_run_side_by_side_and_leave_the_pipeline_up_to_date(toy_repo):
    # a and b wait (up to a minute) until both have started: one after the other, the second
    # would start only after the first ended, and the spans could not overlap
    done = run_script(toy_repo, "--jobs", "2", extra_env={"TOGETHER": "a,b"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    spans = {i: json.loads((toy_repo / "out" / f"{i}.json").read_text()) for i in "abc"}
    assert spans["a"]["start"] < spans["b"]["end"] and spans["b"]["start"] < spans["a"]["end"]
    assert spans["a"]["end"] - spans["a"]["start"] < 30  # they did not wait out the minute
    assert (toy_repo / "report.txt").read_text() == "done"
    assert "Data and pipelines are up to date" in dvc_status(toy_repo)
    lock = yaml.safe_load((toy_repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"prep", "train@a", "train@b", "train@c", "report"}
    seconds = json.loads((toy_repo / repro.SECONDS_FILE).read_text())
    assert set(seconds) == {"train@a", "train@b", "train@c"}  # the next run's order
    again = run_script(toy_repo, "--jobs", "2")
    assert again.returncode == 0 and "Running stage" not in again.stdout
    assert "at a time" not in again.stdout  # nothing to train: no process started for it
    (toy_repo / "out" / "b.json").unlink()  # one training's output gone: only that one runs
    third = run_script(toy_repo, "--jobs", "2")
    assert third.returncode == 0 and "Running 1 stage, 2 at a time: train@b" in third.stdout
    assert (toy_repo / "out" / "b.json").is_file()


def test_a_failed_training_starts_no_other_and_names_itself(toy_repo):
    (toy_repo / "broken").mkdir()
    (toy_repo / "broken" / "b").write_text("")
    done = run_script(toy_repo, "--jobs", "2")
    assert done.returncode == 1
    assert "train@b failed" in done.stderr and "b is broken" in done.stderr
    lock = yaml.safe_load((toy_repo / "dvc.lock").read_text())["stages"]
    assert "train@a" in lock  # it ran beside b and was committed
    assert not (toy_repo / "marks" / "c").exists()  # never started after the failure
    assert "train@b" not in lock and "report" not in lock
    assert not (toy_repo / "report.txt").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_stops_every_training_and_leaves_no_lock(toy_repo, signum):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "repro.py"), "--jobs", "2"], cwd=toy_repo,
        env={**pipeline_env(), "WORK_SECONDS": "60"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marks = [toy_repo / "marks" / i for i in "ab"]
    deadline = time.monotonic() + 120
    while not all(m.exists() for m in marks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(m.exists() for m in marks), "the two trainings never started"
    time.sleep(0.5)
    proc.send_signal(signum)  # to the script alone (its stages run in process groups of their own)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    for mark in marks:
        assert not alive(json.loads(mark.read_text())["pid"])  # nothing left running
    lock = toy_repo / "dvc.lock"
    stages = yaml.safe_load(lock.read_text())["stages"] if lock.exists() else {}
    assert "prep" in stages and "train@a" not in stages and "train@b" not in stages
    assert "train@a" in dvc_status(toy_repo)  # DVC answers (no lock left): a is still to run
    resumed = run_script(toy_repo, "--jobs", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (toy_repo / "report.txt").read_text() == "done"
