"""A stage run by a real `dvc repro` stops when only the dvc process is sent SIGTERM (DVC forwards
nothing, and dash does not exec the command, so the stage used to run on as an orphan): it says
why, keeps its output out, ends its MLflow run KILLED and dies of SIGTERM. Also when dvc died
before the stage could look, and a dead but unreaped dvc counts as dead."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")

STAGE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from personality.common import atomic_dir, load_base, mlflow_run, stage_errors
    with stage_errors("demo"):
        load_base()
        with mlflow_run("demo", run_name="demo:orphan"), atomic_dir(Path("out")) as staging:
            (staging / "a.txt").write_text("a")
            Path("stage.pid").write_text(str(os.getpid()))
            time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(path: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or DVC is None, reason="Linux, DVC")
@pytest.mark.parametrize("shell", [s for s in ("/bin/sh", "/bin/bash") if Path(s).exists()])
def test_a_stage_stops_when_dvc_is_killed(tmp_path, shell):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"base": params["base"]}))
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"demo": {
        "cmd": f"{sys.executable} stage.py", "deps": ["stage.py"], "outs": ["out"]}}}))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "MLFLOW_TRACKING", "PERSONALITY_"))}
    env.update(PYTHONPATH=str(REPO), SHELL=shell, DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true")
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    with open(tmp_path / "log.txt", "w") as log:
        dvc = subprocess.Popen([DVC, "repro"], cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            stage_pid = int(_wait_for(tmp_path / "stage.pid", 120))
            dvc.send_signal(signal.SIGTERM)  # the dvc process only, as `kill <pid>` does
            dvc.wait(timeout=30)
            deadline = time.monotonic() + 30
            while _alive(stage_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _alive(stage_pid), "the stage ran on after dvc ended"
        finally:
            if dvc.poll() is None:
                dvc.kill()
            if (tmp_path / "stage.pid").exists() and _alive(stage_pid):
                os.kill(stage_pid, signal.SIGKILL)
    text = (tmp_path / "log.txt").read_text()
    assert "has ended: stopping" in text and "demo: stopped (SIGTERM)" in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.run_name = 'demo:orphan'")
    assert [r.info.status for r in runs] == ["KILLED"]


def _stage_under(tmp_path: Path, rwlock_pids: list[int]) -> subprocess.Popen:
    """A stage started through `sh -c` with DVC's environment and an rwlock naming `pids`."""
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / ".dvc" / "tmp" / "rwlock").write_text(json.dumps(
        {"write": {f"out{i}": {"pid": pid, "cmd": "dvc repro"} for i, pid in
                   enumerate(rwlock_pids)}, "read": {}}))
    stage = ("from personality.common import stage_errors\nimport time\n"
             "with stage_errors('demo'):\n    print('running', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_STAGE": "demo", "DVC_ROOT": str(tmp_path)}
    return subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c \"$0\"; exit $?", stage],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")
def test_a_dvc_that_died_before_the_stage_looked_stops_it_at_once(tmp_path):
    """Its rwlock still names it (killed, it cleaned nothing up), and no live dvc in it is an
    ancestor of the stage: the stage stops as soon as it starts."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    proc = _stage_under(tmp_path, [dead.pid])
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the stage ran on after its dvc had died") from None
    assert proc.returncode == 128 + signal.SIGTERM or proc.returncode == -signal.SIGTERM, err
    assert "before this stage had started" in err and "demo: stopped (SIGTERM)" in err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")
def test_the_chain_runs_up_to_the_dvc_the_rwlock_names(tmp_path):
    """Here this test process plays dvc: the stage watches its shell and this process, and runs
    on while both live."""
    proc = _stage_under(tmp_path, [os.getpid()])
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(2.5)  # the watcher polls every second
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()
    from personality import launcher

    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 30; exit 0"])
    try:
        time.sleep(0.3)
        stat = launcher._stat(shell.pid)
        assert stat is not None and stat[1] == os.getpid()
    finally:
        shell.kill()
    time.sleep(0.3)
    assert launcher._stat(shell.pid) is None  # a zombie (killed, not yet reaped) counts as gone
    shell.wait()
