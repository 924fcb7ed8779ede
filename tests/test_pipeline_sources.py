"""`dvc repro` of the pipeline, in a throw-away git + DVC repository, on a small fixture of every
source that has video (folder, chalearn16, udiva): the real dvc.yaml, the real stage commands
(training shortened to two small models and two epochs). The folder source runs every stage, and
DVC's caching and experiments on top; chalearn16 and udiva run to `evaluate` (their ingest, the
front-end, training, scoring): deploy, register and explain read nothing source-specific, and each
full repro costs about a minute more of CI (register alone ~30 s). The folder pipeline's first run
is `make run`'s (scripts/repro.py: the trainings side by side)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from personality import datasets
from personality.common import read_artifact
from tests.conftest import REPO, real_fixture
from tests.test_datasets import chalearn_annotations, py2_pickle

QUICK_TRAIN = {"models": ["perfex_cnn", "audio_fn_linear"], "epochs": 2, "mlflow": False}


def face_clip(path: Path, n_frames: int = 10) -> Path:
    """A clip of a real face photo (tests/fixtures/single_face.jpg, 160 x 90) over a 0.4 s tone:
    the AU models need a face in some frame (a clip without one has no AU sequence:
    models/data.py), the audio models a sound."""
    from fractions import Fraction

    import av
    import cv2

    from personality.video_io import mux_mono_audio

    face = cv2.resize(cv2.imread(str(real_fixture("single_face.jpg")))[:, :, ::-1], (160, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=Fraction(25))
        v.width, v.height, v.pix_fmt = 160, 90, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono")
        for _ in range(n_frames):
            for packet in v.encode(av.VideoFrame.from_ndarray(face.copy(), format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
        tone = (0.1 * np.sin(np.arange(6400) * 2 * np.pi * 220 / 16000)).astype(np.float32)
        mux_mono_audio(c, a, tone, 16000)
    return path


def make_dvc_repo(tmp: Path, ingest: dict) -> Path:
    """A copy of the project's code and pipeline with `ingest` params replaced, committed."""
    repo = tmp / "repo"
    repo.mkdir()
    for name in ("personality", "stages", "models", "scripts"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "requirements.txt"):  # requirements: a register dep
        shutil.copy(REPO / name, repo / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(ingest)
    params["base"]["workers"] = 1  # a handful of tiny clips: worker start-up would dominate
    params["train"].update(QUICK_TRAIN)
    params["retrain"].update(models=["perfex_cnn"], epochs=2, mlflow=False)
    params["evaluate"]["mlflow"] = False
    # the explain and register stages run for real, on a lighter load (CI time)
    params["explain"].update(repeats=2, bootstrap=20, mlflow=False)
    params["register"]["log_all"] = False
    params["deploy"]["model"] = "perfex_cnn+retrained"  # no user study: falls back to perfex_cnn
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pipeline_env()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "fixture"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo


def pipeline_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONDONTWRITEBYTECODE="1")
    env.pop("DVC_ROOT", None)
    return env


def repro(repo: Path, *targets: str) -> subprocess.CompletedProcess:
    out = subprocess.run(["dvc", "repro", *targets], cwd=repo, env=pipeline_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def check_pipeline(repo: Path, n_videos: int, *, full: bool = True) -> None:
    """The artifacts of a repro up to evaluate, and with `full` those of every later stage."""
    manifest = read_artifact("manifest", path=repo / "data/manifest.parquet")
    assert len(manifest) == n_videos
    assert read_artifact("frames", path=repo / "data/frames")["video_id"].nunique() == n_videos
    assert read_artifact("aus", path=repo / "data/aus")["video_id"].nunique() == n_videos
    assert read_artifact("audio", path=repo / "data/audio")["video_id"].nunique() == n_videos
    for model in QUICK_TRAIN["models"]:
        assert (repo / f"data/models/{model}/best.pt").is_file()
    report = json.loads((repo / "metrics/evaluate.json").read_text())
    assert {"perfex_cnn", "audio_fn_linear", "baseline"} <= set(report)
    assert "skipped" in json.loads((repo / "metrics/retrain.json").read_text())
    if not full:
        return
    assert len(pd.read_parquet(repo / "data/deploy/labels.parquet")) == n_videos
    registered = json.loads((repo / "metrics/register.json").read_text())
    assert registered["version"] >= 1 and registered["model"] == report["selection"]["best"]
    assert (repo / "metrics/explain.json").is_file()
    for stage in ("evaluate", "register", "explain"):  # what a fresh clone must run again
        assert json.loads((repo / f"data/tracked/{stage}.json").read_text())["stage"] == stage
    status = subprocess.run(["dvc", "status"], cwd=repo, env=pipeline_env(),
                            capture_output=True, text=True)
    # only the inputs fingerprint, which runs on every repro (stages/inputs.py), is listed
    assert status.stdout.split() == ["inputs:", "always", "changed"], status.stdout


def chalearn16_fixture(tmp: Path) -> Path:
    """Two clips per official split, with the annotation pickles (Python 2 protocol)."""
    root = tmp / "chalearn"
    split_dirs = {"train": "train/training80_01", "val": "validation/validation80_01",
                  "test": "test/test80_01"}
    pickles = {"train": "annotation_training.pkl", "val": "annotation_validation.pkl",
               "test": "annotation_test.pkl"}
    for k, (split, folder) in enumerate(split_dirs.items()):
        names = [f"{chr(65 + k) * 11}.00{i}.mp4" for i in (1, 2)]
        for name in names:
            face_clip(root / folder / name)
        (root / pickles[split]).write_bytes(
            py2_pickle(chalearn_annotations({n: 0.3 + 0.1 * k for n in names})))
    return root


def udiva_fixture(tmp: Path) -> Path:
    """One session (two participants, talk task) per split, with z-scored labels."""
    root = tmp / "udiva"  # the release's layout (datasets.udiva_release_splits)
    header = ("ID,OPENMINDEDNESS_Z,CONSCIENTIOUSNESS_Z,EXTRAVERSION_Z,AGREEABLENESS_Z,"
              "NEGATIVEEMOTIONALITY_Z\n")
    for k, (split, spec) in enumerate(datasets.udiva_release_splits().items()):
        a, b = 100 + 2 * k, 101 + 2 * k
        (root / spec["parts"]).parent.mkdir(parents=True)
        (root / spec["parts"]).write_text(
            header + f"{a},0.1,0.2,0.3,0.4,0.5\n{b},-0.1,-0.2,-0.3,-0.4,-0.5\n")
        (root / spec["sessions"]).write_text(f"ID,PART.1,PART.2\n00{k},{a},{b}\n")
        for part in (1, 2):
            face_clip(root / spec["recordings"] / f"talk_recordings_{split}/00{k}/FC{part}_T.mp4")
    return root


@pytest.fixture(scope="module")
def dataset_repos(tmp_path_factory) -> dict[str, Path]:
    """chalearn16 and udiva repos, each reproduced to `evaluate`; the two repros run at the same
    time (each is one process after another, so two share 2 cores at little cost: CI time)."""
    repos, runs = {}, {}
    for source, fixture in (("chalearn16", chalearn16_fixture), ("udiva", udiva_fixture)):
        tmp = tmp_path_factory.mktemp(source)
        repos[source] = make_dvc_repo(tmp, {"source": source, source: {"root": str(fixture(tmp))}})
        runs[source] = subprocess.Popen(["dvc", "repro", "evaluate"], cwd=repos[source],
                                        env=pipeline_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    for source, proc in runs.items():
        try:
            out, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert proc.returncode == 0, f"{source}: " + out[-6000:]
    return repos


def test_chalearn16_pipeline(dataset_repos):
    repo = dataset_repos["chalearn16"]
    check_pipeline(repo, 6, full=False)
    report = json.loads((repo / "metrics/ingest.json").read_text())
    assert report["source"] == "chalearn16" and report["n_bad_rows"] == 0


def test_udiva_pipeline(dataset_repos):
    repo = dataset_repos["udiva"]
    check_pipeline(repo, 6, full=False)
    m = read_artifact("manifest", path=repo / "data/manifest.parquet")
    assert (m["label_scale"] == "z").all()
    report = json.loads((repo / "metrics/evaluate.json").read_text())
    assert report["perfex_cnn"]["mean"]["acc"] is None  # z-scores: no ACC


def test_folder_pipeline_and_second_repro_does_nothing(tmp_path):
    ds = tmp_path / "ds"
    lines = ["video,O,C,E,A,N,subject"]
    for i in range(4):
        face_clip(ds / f"v{i}.mp4")
        lines.append(f"v{i}.mp4,0.{i + 1},0.5,0.5,0.5,0.5,s{i}")
    (ds / "labels.csv").write_text("\n".join(lines) + "\n")
    repo = make_dvc_repo(tmp_path, {"source": "folder",
                                    "folder": {"labels": str(ds / "labels.csv")}})
    # as `make run` does: scripts/repro.py, its two trainings side by side
    first = subprocess.run([sys.executable, "scripts/repro.py", "--jobs", "2"], cwd=repo,
                           env=pipeline_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Running 2 stages, 2 at a time" in first.stdout
    check_pipeline(repo, 4)
    again = repro(repo)  # and plain `dvc repro` finds all of it up to date
    assert again.stdout.count("Running stage") == 1  # the inputs fingerprint only
    assert "Running stage 'inputs'" in again.stdout
    # a corrected label: the fingerprint moves, ingest (and what follows from the manifest) runs
    csv = ds / "labels.csv"
    csv.write_text(csv.read_text().replace("v0.mp4,0.1,", "v0.mp4,0.9,"))
    relabelled = repro(repo, "ingest")
    assert "Running stage 'ingest'" in relabelled.stdout
    m = read_artifact("manifest", path=repo / "data/manifest.parquet").set_index("video_id")
    assert m.loc["v0.mp4", "O"] == 0.9
    # what the rest of a repro would run: what reads the labels, not the front-end (the clips
    # did not change); a dry run says so without the minutes of running it
    plan = repro(repo, "--dry").stdout
    assert "Running stage 'train@perfex_cnn'" in plan and "Running stage 'evaluate'" in plan
    assert "Running stage 'frames'" not in plan and "Running stage 'audio'" not in plan
    # a zoo experiment, the way the README says: only that model is trained and scored; the
    # AU models' checkpoints and predictions left in the workspace are neither fine-tuned,
    # deployed nor evaluated
    exp = subprocess.run(["dvc", "exp", "run", "-S", "train.models=[logmel_cnn]"], cwd=repo,
                         env=pipeline_env(), capture_output=True, text=True, timeout=600)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "Running stage 'train@logmel_cnn'" in exp.stdout
    assert "train@perfex_cnn" not in exp.stdout
    report = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(report) == {"logmel_cnn", "baseline", "selection"}
    assert "skipped" in json.loads((repo / "metrics/retrain.json").read_text())
    assert "skipped" in json.loads((repo / "data/deploy/skipped.json").read_text())
    # the same in a temporary copy (as `dvc exp run --queue` runs): DVC points DVC_ROOT at this
    # repo there, yet the outputs must go to the copy and come back as an experiment commit
    shutil.rmtree(repo / "data/models/logmel_cnn")
    workspace_report = (repo / "metrics/evaluate.json").read_bytes()
    # (with scripts/zoo.py's overrides: a zoo experiment registers nothing)
    exp = subprocess.run(["dvc", "exp", "run", "--temp", "-n", "zoo-audio_fn_linear", "-S",
                          "train.models=[audio_fn_linear]", "-S", "register.enabled=false"],
                         cwd=repo, env=pipeline_env(), capture_output=True, text=True,
                         timeout=600)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    # the workspace was not written: no checkpoint, its metrics still the logmel_cnn experiment's
    assert not (repo / "data/models/logmel_cnn").exists()
    assert (repo / "metrics/evaluate.json").read_bytes() == workspace_report
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.split()
    ref = [r for r in refs if r.endswith("/zoo-audio_fn_linear")]
    assert len(ref) == 1, refs
    summary = json.loads(subprocess.run(["git", "show", f"{ref[0]}:metrics/summary.json"],
                                        cwd=repo, capture_output=True, text=True,
                                        check=True).stdout)
    assert set(summary) == {"audio_fn_linear", "baseline"}
    # scripts/zoo.py (make zoo) tabulates such experiments from their refs
    table = subprocess.run([sys.executable, "scripts/zoo.py", "--collect", "--models",
                            "audio_fn_linear"], cwd=repo, env=pipeline_env(),
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "audio_fn_linear" in table.stdout
    rows = json.loads((repo / "bench/results/zoo.json").read_text())
    assert [r["model"] for r in rows] == ["audio_fn_linear"]
    assert rows[0]["test_ccc"] == summary["audio_fn_linear"]["ccc"]
    assert rows[0]["baseline_ccc"] == summary["baseline"]["ccc"] and rows[0]["epochs_run"] == 2
