"""The registered pyfunc model gives predict's scores: logged and registered by the register stage
(stages/serve.py), loaded with mlflow.pyfunc, and served with `mlflow models serve` on a free local
port, answering an HTTP request with a talking-head clip's path under PERSONALITY_VIDEO_ROOT (a path
outside it is refused). ~2 min on one core.

    .venv/bin/python -m pytest tests/test_serve.py -q
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from personality.common import BaseParams, load_params
from personality.schemas import TRAITS
from stages import audio, aus, evaluate, faces, frames, functionals, predict, serve, train
from tests.conftest import REPO, real_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "functionals_ridge"  # closed form: trained in a second, and it reads face and voice
VIDEO_ROOT = "PERSONALITY_VIDEO_ROOT"  # the served model reads videos under these folders only


@pytest.fixture(scope="module")
def served_root(tiny_dataset, tmp_path_factory):
    """A repo-like root: the tiny dataset through the front-end, one model trained and
    evaluated, params.yaml beside it, and its own MLflow store (DVC_ROOT points at it)."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(tiny_dataset / "data", root / "data")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    base = BaseParams(workers=1)
    for stage, cls in ((frames, frames.FramesParams), (faces, faces.FacesParams),
                       (aus, aus.AusParams), (audio, audio.AudioParams),
                       (functionals, functionals.FunctionalsParams)):
        stage.run(load_params(stage.__name__.split(".")[1], cls), base, root=root)
    tp = dataclasses.replace(load_params("train", train.TrainParams), models=[MODEL],
                             mlflow=False, threads=1)
    train.run(tp, base, root=root)
    ep = dataclasses.replace(load_params("evaluate", evaluate.EvaluateParams), mlflow=False,
                             bootstrap=50)
    evaluate.run(ep, base, root=root, models=[MODEL])
    saved = {k: os.environ.get(k) for k in ("DVC_ROOT", "MLFLOW_TRACKING_URI", VIDEO_ROOT)}
    os.environ["DVC_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # mlflow checks the input example (a clip under root/data) by loading the model here
    os.environ[VIDEO_ROOT] = str(root)
    yield root
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def registered(served_root):
    return serve.run(serve.RegisterParams(), root=served_root)


@pytest.fixture(scope="module")
def expected(served_root, tmp_path_factory):
    """predict's own result for the talking-head clip, with the same checkpoint and params."""
    return predict.predict_video(real_fixture("single_face.mp4"),
                                 model=str(served_root / "data" / "models" / MODEL / "best.pt"),
                                 root=served_root, params_file=served_root / "params.yaml",
                                 work=tmp_path_factory.mktemp("predict"))


def test_register_names_the_model_chosen_on_validation_with_its_test_figures(
        served_root, registered):
    assert registered["model"] == MODEL and registered["version"] == 1
    assert registered["model_uri"] == "models:/personality/1"
    assert set(registered["logged"]) == {MODEL}  # every evaluated model is logged (one here)
    tags = registered["tags"]
    assert tags["chosen_by"] == "best mean CCC on validation"
    report = json.loads((served_root / "metrics" / "evaluate.json").read_text())
    assert float(tags["test_mean_ccc"]) == pytest.approx(report[MODEL]["mean"]["ccc"], abs=1e-4)
    assert "test_mean_ccc_ci_low" in tags and "val_mean_ccc" in tags
    on_disk = json.loads((served_root / "metrics" / "register.json").read_text())
    assert on_disk["version"] == 1
    import mlflow

    version = mlflow.MlflowClient().get_model_version("personality", "1")
    assert version.tags["model"] == MODEL
    # the registered model carries its input example (a clip path), which mlflow checked
    assert mlflow.models.get_model_info(registered["model_uri"]).saved_input_example_info


def test_the_served_params_are_the_sections_dvc_tracks_for_register(served_root, registered,
                                                                     tmp_path):
    """The logged model carried the whole params.yaml, so an edit to a section register does not
    depend on (explain, train) left the registered copy stale after `dvc repro` skipped it; now
    it carries exactly the stage's DVC params, as they are in the workspace."""
    import mlflow
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(registered["model_uri"],
                                                     dst_path=str(tmp_path)))
    carried = yaml.safe_load(next(local.rglob("params.yaml")).read_text())
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["register"]
    assert sorted(serve.SERVED_SECTIONS) == sorted(stage["params"])
    workspace = yaml.safe_load((served_root / "params.yaml").read_text())
    assert carried == {k: workspace[k] for k in serve.SERVED_SECTIONS}


def test_only_the_registered_model_carries_the_input_example(served_root, monkeypatch,
                                                             tmp_path):
    """mlflow runs the whole front-end on the example of every model logged with one: the other
    evaluated models are logged with their signature only."""
    report = {"a": {"mean": {}}, "b": {"mean": {}}, "selection": {"best": "b"}}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(report))
    (tmp_path / "data").mkdir()
    shutil.copy(served_root / "data" / "manifest.parquet", tmp_path / "data")
    examples = {}

    def fake_log(name, report, root, example):
        examples[name] = example
        return type("Info", (), {"model_uri": f"runs:/{name}/model"})(), {}, name

    import mlflow

    monkeypatch.setattr(serve, "log_model_run", fake_log)
    monkeypatch.setattr(mlflow, "register_model",
                        lambda uri, name, tags: type("Version", (), {"version": 7})())
    out = serve.register(serve.RegisterParams(), tmp_path)
    assert out["model"] == "b" and set(out["logged"]) == {"a", "b"}
    assert examples["a"] is None and examples["b"] == serve.example_video(tmp_path)


def test_a_model_named_by_register_model_is_not_tagged_as_chosen_on_validation(monkeypatch,
                                                                              tmp_path):
    """`python -m stages.serve --model a` (or register.model: a) registered a with the tag
    chosen_by "best mean CCC on validation" while validation chose b: the registry said a model
    was chosen on validation that was not."""
    report = {"a": {"mean": {"ccc": 0.2}}, "b": {"mean": {"ccc": 0.3}},
              "selection": {"best": "b", "val": {"a": {"ccc": 0.1, "chosen_share": 0.04},
                                                 "b": {"ccc": 0.4, "chosen_share": 0.96}}}}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(report))
    (tmp_path / "data").mkdir()  # AU sequences without videos: no input example
    pd.DataFrame({"path": [""], "split": ["test"]}).to_parquet(tmp_path / "data/manifest.parquet")

    def fake_log(name, report, root, example):
        tags = serve.version_tags(serve.model_figures(name, report))
        return type("Info", (), {"model_uri": f"runs:/{name}/model"})(), tags, name

    import mlflow

    registered = {}
    monkeypatch.setattr(serve, "find_checkpoint", lambda name, root: root / name)
    monkeypatch.setattr(serve, "log_model_run", fake_log)
    monkeypatch.setattr(mlflow, "register_model", lambda uri, name, tags: registered.update(
        tags) or type("Version", (), {"version": 1})())
    serve.register(serve.RegisterParams(model="a"), tmp_path)
    assert registered["model"] == "a" and registered["val_mean_ccc"] == "0.1000"
    assert registered["chosen_by"] == "register.model (best on validation: b)"
    serve.register(serve.RegisterParams(), tmp_path)  # the default: chosen on validation
    assert registered["model"] == "b"
    assert registered["chosen_by"] == "best mean CCC on validation"
    assert registered["val_chosen_share"] == "0.9600"  # how sure validation's choice is


def test_a_mistyped_register_model_is_named_before_anything_is_logged(tmp_path, monkeypatch):
    """Before: every evaluated model was logged to MLflow first, then the error suggested
    training the misspelt name."""
    report = {"functionals_ridge": {"mean": {}}, "selection": {"best": "functionals_ridge"}}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(report))
    monkeypatch.setattr(serve, "log_model_run", lambda *a: pytest.fail("logged a model"))
    with pytest.raises(serve.ParamsError, match="register.model: 'functionals_rigde' has no "
                       "trained checkpoint .did you mean 'functionals_ridge'"):
        serve.register(serve.RegisterParams(model="functionals_rigde"), tmp_path)


def test_loaded_pyfunc_gives_predicts_scores_and_a_row_per_bad_video(registered, expected,
                                                                     tmp_path, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    clip = real_fixture("single_face.mp4")
    monkeypatch.setenv(VIDEO_ROOT, os.pathsep.join([str(clip.parent), str(tmp_path)]))
    model = mlflow.pyfunc.load_model(registered["model_uri"])
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = model.predict(pd.DataFrame({"video": [str(clip), str(bad), "/etc/hostname"]}))
    assert list(out.columns) == serve.OUTPUT_COLUMNS and len(out) == 3
    got = out.iloc[0]
    for t in TRAITS:
        assert got[t] == pytest.approx(expected[t], abs=1e-6)
    assert got["error"] == "" and got["face_share"] == pytest.approx(expected["face_share"])
    assert "broken.mp4" in out.iloc[1]["error"] and out.iloc[1]["O"] is None
    assert out.iloc[2]["error"] == f"/etc/hostname: {serve.OUTSIDE_ROOTS}"
    # what the scoring server sends is JSON: a refused row's scores null, its model "" (NaN
    # was written as `NaN`, which JSON.parse rejects, and the whole response with it)
    import io
    import json

    from mlflow.pyfunc.scoring_server import predictions_to_json

    sent = io.StringIO()
    predictions_to_json(out, sent)
    rows = json.loads(sent.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert rows["predictions"][1]["O"] is None and rows["predictions"][1]["model"] == ""
    assert rows["predictions"][0]["O"] == pytest.approx(expected["O"], abs=1e-6)


def test_evaluated_models_are_the_scored_entries_of_the_report():
    report = {"a": {"mean": {}}, "a+retrained": {"mean": {}}, "baseline": {"mean": {}},
              "selection": {"best": "a"}, "errors": {"b": "bad file"}}
    assert serve.evaluated_models(report) == ["a", "a+retrained"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise AssertionError(f"no answer from {url} within {seconds} s")


def concurrent_answers(url: str, clip: Path) -> tuple[int, int]:
    """(rows scored for a request of the clip three times (~4 s), the HTTP status of one sent
    0.5 s into it) from a server started with UVICORN_LIMIT_CONCURRENCY=2."""
    import threading

    first: dict = {}
    body = {"dataframe_split": {"columns": ["video"], "data": [[str(clip)]] * 3}}
    scoring = threading.Thread(target=lambda: first.update(post(url, body)))
    scoring.start()
    time.sleep(0.5)
    try:
        post(url, {"dataframe_split": {"columns": ["video"], "data": [[str(clip)]]}})
        second = 200
    except urllib.error.HTTPError as exc:
        second = exc.code
    scoring.join()
    return sum(not r["error"] for r in first["predictions"]), second


def test_mlflow_models_serve_answers_with_predicts_scores(served_root, registered, expected):
    port = free_port()
    # the venv's bin on PATH: mlflow starts its server as `uvicorn ...` through bash (make test
    # runs .venv/bin/python without activating the venv)
    clip = real_fixture("single_face.mp4")
    # UVICORN_LIMIT_CONCURRENCY: uvicorn's bound on requests at once, which the mlflow CLI passes
    # on (MLflow itself bounds neither their number nor their bodies)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{served_root / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true", VIDEO_ROOT: str(clip.parent),
           "UVICORN_LIMIT_CONCURRENCY": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m",
                               registered["model_uri"], "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, cwd=served_root, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        answer = post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": {
            "columns": ["video"], "data": [[str(clip)], ["/etc/hostname"],
                                           ["tests/fixtures/single_face.mp4"]]}})
        busy = concurrent_answers(f"http://127.0.0.1:{port}/invocations", clip)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert busy == (3, 503)  # a request while another scores: refused at once, not queued
    row, outside, relative = answer["predictions"]
    for t in TRAITS:
        assert row[t] == pytest.approx(expected[t], abs=1e-6)
    assert row["model"] == expected["model"] and row["error"] == ""
    # a path outside PERSONALITY_VIDEO_ROOT, and a relative one, are refused; the clip is scored
    assert outside["error"] == f"/etc/hostname: {serve.OUTSIDE_ROOTS}"
    assert relative["error"] == f"tests/fixtures/single_face.mp4: {serve.OUTSIDE_ROOTS}"
