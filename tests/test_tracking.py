"""MLflow tracking and DVC experiments, end to end, in temporary directories.

- evaluate under a fake DVC_ROOT logs into <root>/mlflow.db (sqlite): runs with params, metrics,
  PNG artifacts and the tags of personality.common.mlflow_run; a per-epoch curve logged with `step`;
- a queued experiment's DVC_ROOT (<repo>/.dvc/tmp/exps/<tmp>) logs into <repo>/mlflow.db;
- a real DVC project in a temporary git repo: `dvc repro`, `dvc exp run -S`, `dvc metrics diff
  --json`, `dvc exp run --queue` + `--run-all -j 1`, all logging into one mlflow.db (~35-60 s,
  most of it DVC's queue worker and MLflow's import in each stage process).

Nothing here touches the checkout's own mlflow.db, dvc.lock or data/.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages import evaluate as ev
from personality.common import EXPERIMENT_NAME, init_pipeline_tracking, mlflow_run
from test_evaluate import make_manifest, predictions, truth, write_root

REPO = Path(__file__).resolve().parents[1]  # the checkout, wherever CI puts it
BIN = Path(sys.executable).parent


@pytest.fixture
def tracking_env(monkeypatch):
    """A clean environment for mlflow_run: no inherited tracking URI or experiment name."""
    for key in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return monkeypatch


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, made once: creating its tables costs ~5 s, so each test
    starts from a copy (`mlflow_run` opens whatever file sits at <root>/mlflow.db)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    client_for(path).search_experiments()  # creates the schema
    return path


def client_for(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def runs_of(db: Path, parents: bool = False) -> list:
    """The stages' runs of the store (with `parents`: the pipeline runs' parents instead)."""
    client = client_for(db)
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert exp is not None, f"no experiment {EXPERIMENT_NAME!r} in {db}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if (r.data.tags.get("kind") == "pipeline") == parents]


def test_evaluate_logs_runs_into_root_mlflow_db(tmp_path, rng, tracking_env, empty_store):
    import mlflow

    root = tmp_path / "repo"
    m = make_manifest(rng)
    y = truth(m)
    write_root(root, m, {"perfect": predictions(m, y, "perfect"),
                         "noisy": predictions(m, np.clip(y + rng.normal(0, .1, y.shape), 0, 1),
                                              "noisy")})
    shutil.copy(empty_store, root / "mlflow.db")
    tracking_env.setenv("DVC_ROOT", str(root))
    tracking_env.setenv("DVC_EXP_NAME", "tiny-exp")
    tracking_env.chdir(root)  # as under `dvc repro`: the stage runs in the repo root
    report = ev.run(ev.EvaluateParams(dpi=40))

    # a training-like run with a per-epoch curve, through the same helper
    with mlflow_run("train", run_name="train:toy", params={"lr": 0.01, "model": {"depth": 2}},
                    tags={"model": "toy"}) as mlf:
        for epoch, value in enumerate([0.1, 0.25, 0.4]):
            mlf.log_metric("val_ccc", value, step=epoch)
            mlf.log_metric("train_loss", 1.0 / (epoch + 1), step=epoch)

    db = root / "mlflow.db"
    assert db.is_file()
    client = client_for(db)
    runs = runs_of(db)
    by_model = {r.data.tags["model"]: r for r in runs}
    assert set(by_model) == {"perfect", "noisy", "all", "toy"}

    for name in ("perfect", "noisy"):
        run = by_model[name]
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["stage"] == "evaluate" and tags["dvc_exp_name"] == "tiny-exp"
        assert tags["git_commit"]  # "unknown" outside git, a sha inside
        assert tags["eval_kind"] == "model" and run.info.run_name == f"evaluate:{name}"
        assert params["model"] == name and params["split"] == "test" and params["bins"] == "all"
        assert metrics["test_mean_ccc"] == pytest.approx(report[name]["mean"]["ccc"])
        assert metrics["test_E_acc"] == pytest.approx(report[name]["E"]["acc"])
        assert metrics["baseline_test_mean_acc"] == pytest.approx(report["baseline"]["mean"]["acc"])
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert arts == {f"plots/scatter_{name}.png"}
        local = client.download_artifacts(run.info.run_id, f"plots/scatter_{name}.png",
                                          str(tmp_path / name))
        assert Path(local).read_bytes()[:4] == b"\x89PNG"
        # artifacts live beside the store, never in a temporary folder
        assert str(root) in run.info.artifact_uri
    assert by_model["perfect"].data.metrics["test_mean_ccc"] == pytest.approx(1.0)
    summary = by_model["all"]
    assert summary.data.tags["eval_kind"] == "summary"
    assert {a.path for a in client.list_artifacts(summary.info.run_id, "plots")} == {
        "plots/mean_ccc_vs_baseline.png"}
    logged = json.loads(Path(client.download_artifacts(
        summary.info.run_id, "evaluate.json", str(tmp_path / "summary"))).read_text())
    assert logged == json.loads((root / "metrics" / "evaluate.json").read_text())

    toy = by_model["toy"]
    assert toy.data.params == {"lr": "0.01", "model.depth": "2"}
    assert toy.data.tags["stage"] == "train"
    history = client.get_metric_history(toy.info.run_id, "val_ccc")
    assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == [
        (0, 0.1), (1, 0.25), (2, 0.4)]

    # one pipeline run: one parent, named after the DVC experiment, every run nested under it
    (parent,) = runs_of(db, parents=True)
    assert parent.info.run_name == "tiny-exp"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    for run in (parent, *runs):
        assert run.data.tags["pipeline_id"] == parent.data.tags["pipeline_id"]
        assert run.data.tags["dvc_exp_name"] == "tiny-exp" and "params_digest" in run.data.tags
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # the manifest is each evaluate run's dataset input: name, digest, clips per split
    (inp,) = by_model["perfect"].inputs.dataset_inputs
    assert inp.dataset.name == "manifest" and len(inp.dataset.digest) == 16
    input_tags = {t.key: t.value for t in inp.tags}
    assert input_tags["mlflow.data.context"] == "evaluation"
    assert int(input_tags["n_test"]) == int((m["split"] == "test").sum())
    assert int(input_tags["n_clips"]) == len(m)

    # the fluent API sees the same store
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    df = mlflow.search_runs(experiment_names=[EXPERIMENT_NAME],
                            filter_string="tags.stage = 'evaluate' and tags.eval_kind = 'model'")
    assert sorted(df["tags.model"]) == ["noisy", "perfect"]
    assert "metrics.test_mean_ccc" in df.columns and "params.model" in df.columns


def test_the_parent_made_before_parallel_stages_is_the_one_they_use(tmp_path, tracking_env):
    """scripts/repro.py makes the store, experiment and pipeline parent before trainings run side
    by side: each then nests under that one parent instead of racing to create its own."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("seed: 1\n")
    tracking_env.setenv("DVC_ROOT", str(root))
    tracking_env.chdir(root)
    parent = init_pipeline_tracking()
    assert (root / "mlflow.db").is_file()
    for model in ("a", "b"):
        with mlflow_run("train", run_name=f"train:{model}", tags={"model": model}) as mlf:
            assert mlf.active_run().data.tags["mlflow.parentRunId"] == parent
    assert init_pipeline_tracking() == parent
    assert [r.info.run_id for r in runs_of(root / "mlflow.db", parents=True)] == [parent]


def store_repo(tmp_path: Path, tracking_env, empty_store: Path) -> Path:
    """A bare project at tmp_path/repo with a copy of the empty store, made the DVC root and cwd."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(empty_store, root / "mlflow.db")
    tracking_env.setenv("DVC_ROOT", str(root))
    tracking_env.chdir(root)
    return root


def test_trainings_that_log_the_manifest_at_once_all_get_it(tmp_path, rng, tracking_env,
                                                           empty_store):
    """Trainings side by side on a new store (make run) all find no 'manifest' dataset, then all
    insert it: MLflow's UNIQUE constraint failed the losers, and with them `make run` (1 of 5
    tries of 8 processes at once, here). The loser's transaction is rolled back whole; logging
    again finds the winner's dataset. Any other failure still fails."""
    import mlflow
    from mlflow.exceptions import MlflowException

    root = store_repo(tmp_path, tracking_env, empty_store)
    make_manifest(rng).to_parquet(root / "manifest.parquet")
    real, calls = mlflow.log_input, []

    def lose_the_race_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(*args, **kwargs)

    tracking_env.setattr(mlflow, "log_input", lose_the_race_once)
    with mlflow_run("train", run_name="train:a", manifest=root / "manifest.parquet"):
        pass
    [run] = runs_of(root / "mlflow.db")
    assert len(calls) == 2 and run.info.status == "FINISHED"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["manifest"]

    def other_failure(*args, **kwargs):
        raise MlflowException("disk I/O error")

    tracking_env.setattr(mlflow, "log_input", other_failure)
    with pytest.raises(MlflowException, match="disk I/O error"):
        with mlflow_run("train", run_name="train:b", manifest=root / "manifest.parquet"):
            pass


def test_a_run_stopped_while_it_logs_its_params_is_killed(tmp_path, tracking_env, empty_store):
    """Ctrl-C or SIGTERM (SystemExit) during the run's set-up ends it KILLED, as in its body;
    a failure stays FAILED."""
    import mlflow

    root = store_repo(tmp_path, tracking_env, empty_store)
    for stop, name in ((KeyboardInterrupt, "stopped"), (ValueError, "failed")):
        def log_params(params, stop=stop):
            raise stop()

        tracking_env.setattr(mlflow, "log_params", log_params)
        with pytest.raises(stop):
            with mlflow_run("train", run_name=name, params={"lr": 0.1}):
                pass
    assert sorted((r.info.run_name, r.info.status) for r in runs_of(root / "mlflow.db")) == [
        ("failed", "FAILED"), ("stopped", "KILLED")]


def test_the_pipeline_run_shows_a_stage_that_failed_or_was_stopped(tmp_path, tracking_env,
                                                                    empty_store):
    """The parent said FINISHED beside a KILLED or FAILED child; now it takes the worst of its
    children's last statuses, and a successful re-run of the stage clears it."""
    root = store_repo(tmp_path, tracking_env, empty_store)

    def run(name: str, stop: type[BaseException] | None = None) -> str:
        with contextlib.suppress(stop or ()):
            with mlflow_run("train", run_name=name):
                if stop is not None:
                    raise stop()
        (parent,) = runs_of(root / "mlflow.db", parents=True)
        return parent.info.status

    assert run("train:a") == "FINISHED"
    assert run("train:b", KeyboardInterrupt) == "KILLED"
    assert run("train:c", ValueError) == "FAILED"
    assert run("train:b") == "FAILED"  # c still failed
    assert run("train:c") == "FINISHED"  # both re-run: nothing left failed or stopped
    with contextlib.suppress(ValueError):  # a best-effort run (timings) failing fails no stage
        with mlflow_run("train", run_name="train:timings", rolls_up=False):
            raise ValueError()
    (parent,) = runs_of(root / "mlflow.db", parents=True)
    assert parent.info.status == "FINISHED"
    assert run("perfex_cnn+retrained", ValueError) == "FAILED"  # `+` is no tag-key character
    (parent,) = runs_of(root / "mlflow.db", parents=True)
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("status.")} == {
        "status.train:a": "FINISHED", "status.train:b": "FINISHED", "status.train:c": "FINISHED",
        "status.perfex_cnn_retrained": "FAILED"}


def test_queued_experiment_logs_into_the_repo_store(tmp_path, tracking_env, empty_store):
    repo = tmp_path / "repo"
    queued = repo / ".dvc" / "tmp" / "exps" / "tmpXYZ"
    queued.mkdir(parents=True)
    shutil.copy(empty_store, repo / "mlflow.db")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (queued / "dvc.yaml").write_text("stages: {}\n")
    tracking_env.setenv("DVC_ROOT", str(queued))
    tracking_env.setenv("DVC_EXP_NAME", "queued-exp")
    tracking_env.chdir(queued)
    with mlflow_run("train", params={"lr": 0.5}) as mlf:
        mlf.log_metric("val_ccc", 0.3, step=0)
    assert not (queued / "mlflow.db").exists()
    (run,) = runs_of(repo / "mlflow.db")
    assert run.data.tags["dvc_exp_name"] == "queued-exp" and run.data.params == {"lr": "0.5"}


def test_first_run_from_a_queued_experiment_keeps_its_artifacts(tmp_path, tracking_env):
    """A fresh store created by a queued experiment (temp copy, deleted afterwards) must put the
    experiment's artifact folder beside the store, not inside that temp copy."""
    repo = tmp_path / "repo"
    queued = repo / ".dvc" / "tmp" / "exps" / "tmpABC"
    queued.mkdir(parents=True)
    tracking_env.setenv("DVC_ROOT", str(queued))
    tracking_env.chdir(queued)
    note = tmp_path / "note.txt"
    note.write_text("plot")
    with mlflow_run("evaluate") as mlf:
        mlf.log_artifact(str(note))
    assert (repo / "mlflow.db").exists() and not (queued / "mlruns").exists()
    assert list((repo / "mlartifacts").rglob("note.txt"))


# --------------------------------------------------------------------------------------------------
# a real DVC project


SCRIPT_PREPARE = """
import pathlib, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
pathlib.Path("data").mkdir(exist_ok=True)
pathlib.Path("data/prepared.txt").write_text(str(lr * 10))
"""

SCRIPT_SCORE = """
import json, pathlib, yaml
from personality.common import mlflow_run   # the checkout's helper, via PYTHONPATH

params = yaml.safe_load(open("params.yaml"))["train"]
score = float(pathlib.Path("data/prepared.txt").read_text()) + 1.0
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/score.json").write_text(json.dumps({"score": score}))
with mlflow_run("score", run_name="score", params=params, tags={"model": "toy"}) as mlf:
    for step in range(3):
        mlf.log_metric("val_ccc", score * (step + 1) / 3, step=step)
    mlf.log_metric("score", score)
    mlf.log_text("hello", "note.txt")
"""

DVC_YAML = """
stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py]
    params: [train.lr]
    outs: [data/prepared.txt]
  score:
    cmd: python score.py
    deps: [score.py, data/prepared.txt]
    params: [train]
    metrics:
      - metrics/score.json:
          cache: false
"""


def _tools() -> dict[str, str]:
    dvc = BIN / "dvc" if (BIN / "dvc").exists() else shutil.which("dvc")
    git = shutil.which("git")
    if not dvc or not git:
        pytest.skip(f"needs dvc and git on this machine (dvc={dvc}, git={git})")
    return {"dvc": str(dvc), "git": git}


def test_dvc_repro_exp_run_metrics_diff_and_queue(tmp_path, tracking_env, empty_store):
    tools = _tools()
    repo = tmp_path / "proj"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "MLFLOW_TRACKING", "GIT_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` = this interpreter
               PYTHONPATH=str(REPO), HOME=str(tmp_path),  # no user git / dvc config leaks in
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")

    def sh(*args: str, tool: str = "dvc") -> str:
        out = subprocess.run([tools[tool], *args], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, f"{tool} {' '.join(args)}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    sh("init", "-q", "-b", "main", tool="git")
    sh("init", "-q")
    (repo / "prepare.py").write_text(SCRIPT_PREPARE)
    (repo / "score.py").write_text(SCRIPT_SCORE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\n")
    (repo / ".gitignore").write_text("/mlflow.db\n/mlruns/\n")
    sh("add", "-A", tool="git")
    sh("commit", "-q", "-m", "pipeline", tool="git")  # `dvc exp run` needs a commit
    shutil.copy(empty_store, repo / "mlflow.db")  # git-ignored, never a DVC output

    sh("repro")
    assert json.loads((repo / "metrics" / "score.json").read_text()) == {"score": 2.0}
    sh("add", "-A", tool="git")
    sh("commit", "-q", "-m", "baseline run", tool="git")

    sh("exp", "run", "-S", "train.lr=0.2")  # a workspace experiment
    diff = json.loads(sh("metrics", "diff", "--json"))
    change = diff["metrics/score.json"]["score"]
    assert change["old"] == 2.0 and change["new"] == 3.0 and change["diff"] == pytest.approx(1.0)
    params_diff = json.loads(sh("params", "diff", "--json"))
    lr_change = params_diff["params.yaml"]["train.lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.1, 0.2)

    sh("exp", "run", "--queue", "-S", "train.lr=0.4")
    sh("exp", "run", "--run-all", "-j", "1")  # runs in <repo>/.dvc/tmp/exps/<tmp>
    shown = json.loads(sh("exp", "show", "--json"))
    scores = set()
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metric = (data.get("metrics") or {}).get("metrics/score.json", {}).get("data")
                if metric:
                    scores.add(metric["score"])
    assert {3.0, 5.0} <= scores, shown

    # every run (workspace, experiment, queued) is in the repo's one store
    db = repo / "mlflow.db"
    assert db.is_file()
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    runs = runs_of(db)
    by_lr = {r.data.params["lr"]: r for r in runs}
    assert set(by_lr) == {"0.1", "0.2", "0.4"}
    for lr, run in by_lr.items():
        assert run.data.tags["stage"] == "score" and run.data.tags["model"] == "toy"
        assert len(run.data.tags["git_commit"]) == 40
        assert run.data.metrics["score"] == pytest.approx(float(lr) * 10 + 1)
    for lr in ("0.2", "0.4"):  # experiments carry their DVC name
        assert by_lr[lr].data.tags["dvc_exp_name"], by_lr[lr].data.tags
    # three pipeline runs, three parents: each named after its DVC experiment (the workspace
    # `dvc repro` after its commit), each holding its own run
    parents = {r.info.run_id: r for r in runs_of(db, parents=True)}
    assert len(parents) == 3
    for lr, run in by_lr.items():
        parent = parents[run.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["pipeline_id"] == run.data.tags["pipeline_id"]
        assert parent.info.run_name == (run.data.tags["dvc_exp_name"]
                                        or f"pipeline {run.data.tags['git_commit'][:8]} params "
                                           f"{run.data.tags['params_digest'][:6]}")
    client = client_for(db)
    queued = by_lr["0.4"]
    history = client.get_metric_history(queued.info.run_id, "val_ccc")
    assert sorted(h.step for h in history) == [0, 1, 2]
    # the queued run's artifacts outlive its temporary copy of the repo
    assert ".dvc/tmp" not in queued.info.artifact_uri
    assert [a.path for a in client.list_artifacts(queued.info.run_id)] == ["note.txt"]
