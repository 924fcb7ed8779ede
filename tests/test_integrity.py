"""Failures a careless or hostile user meets are one line with the right exit code, and nothing
half-done is ever used: params that make no sense, an unfinished checkpoint, a malicious one, an
output path that is a file, a read-only data folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from models.checkpoints import mark_finished, read_checkpoint, save_checkpoint
from models.registry import build_model
from personality.common import BaseParams, ParamsError, load_params
from stages import predict
from tests.conftest import REPO, real_fixture


def test_workers_and_device_that_make_no_sense_are_refused():
    for bad in ({"workers": 0}, {"workers": -3}, {"device": "tpu"}):
        with pytest.raises(ParamsError, match="base."):
            load_params("base", BaseParams, overrides=bad)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("perfex_cnn")
    return save_checkpoint(tmp_path / "perfex_cnn" / "best.pt", model=model,
                           model_name="perfex_cnn", train_mean=[0.5] * 5,
                           inputs=["aus", "aus_mask"], finished=False, epoch=19)


def test_an_unfinished_checkpoint_is_refused_by_predict(checkpoint, tmp_path, caplog):
    code = predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoint)])
    assert code == 2 and "did not finish" in caplog.text and "epoch 19" in caplog.text
    assert not (tmp_path / "o" / "prediction.json").exists()


def test_a_finished_checkpoint_quotes_only_its_own_test_error(checkpoint, tmp_path):
    mark_finished(checkpoint, test_error={t: 0.1 for t in "OCEAN"})
    assert read_checkpoint(checkpoint)["finished"] is True
    result = predict.predict_video(real_fixture("single_face.mp4"), model=str(checkpoint),
                                   root=tmp_path, work=tmp_path)
    assert result["test_error"] == {t: 0.1 for t in "OCEAN"}
    assert result["test_error_ci"] is None  # no evaluate.json: no interval to quote


def test_a_one_subject_test_split_keeps_the_clip_s_prediction_interval(checkpoint, tmp_path):
    """With one test subject evaluate withholds the MAE interval ([None, None]); the clip's
    prediction interval comes from the val half-widths and was dropped with it."""
    mark_finished(checkpoint, test_error={t: 0.1 for t in "OCEAN"})
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"perfex_cnn": {
        **{t: {"mae": 0.1} for t in "OCEAN"}, "ci": {t: {"mae": [None, None]} for t in "OCEAN"},
        "prediction_interval": {"level": 0.8}},
        "selection": {"val": {"perfex_cnn": {"interval_half_width": [0.1] * 5}}}}))
    result = predict.predict_video(real_fixture("single_face.mp4"), model=str(checkpoint),
                                   root=tmp_path, work=tmp_path)
    assert result["test_error_ci"] is None
    assert result["prediction_interval"]["O"] == pytest.approx(
        [max(result["O"] - 0.1, 0), min(result["O"] + 0.1, 1)])


@pytest.mark.parametrize("evaluated_mae, quoted", [(0.1, True), (0.1 + 1e-3, False)])
def test_the_test_error_interval_is_quoted_only_for_the_run_evaluate_measured(
        checkpoint, tmp_path, evaluated_mae, quoted):
    """evaluate.json's bootstrap interval of the MAE goes beside the checkpoint's own MAE only when
    evaluate measured that very run (same MAE); an interval of another run's figure is not shown."""
    mark_finished(checkpoint, test_error={t: 0.1 for t in "OCEAN"})
    (tmp_path / "metrics").mkdir()
    half = [0.1, 0.2, None, 0.3, 0.9]  # E: too few val clips for one
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"perfex_cnn": {
        **{t: {"mae": evaluated_mae} for t in "OCEAN"},
        "ci": {t: {"mae": [0.05, 0.2]} for t in "OCEAN"},
        "prediction_interval": {"level": 0.95}},
        "selection": {"val": {"perfex_cnn": {"interval_half_width": half}}}}))
    result = predict.predict_video(real_fixture("single_face.mp4"), model=str(checkpoint),
                                   root=tmp_path, work=tmp_path)
    assert result["test_error_ci"] == ({t: [0.05, 0.2] for t in "OCEAN"} if quoted else None)
    # the clip's prediction interval: each score ± the model's val half-width, kept in [0, 1]
    interval = result["prediction_interval"]
    if not quoted:
        assert interval is None
        return
    assert interval["level"] == 0.95 and interval["E"] is None
    assert predict._interval_text(result, "O").endswith("(95% prediction interval)")
    assert predict._interval_text(result, "E") == ""
    for t, h in zip("OCAN", (0.1, 0.2, 0.3, 0.9)):
        assert interval[t] == pytest.approx([max(result[t] - h, 0), min(result[t] + h, 1)])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/personality_pwned",))


def test_a_malicious_checkpoint_is_one_line_without_unsafe_advice(tmp_path, caplog):
    bad = tmp_path / "evil.pt"
    torch.save({"model_name": _Evil()}, bad)
    code = predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "o"),
                         "--model", str(bad)])
    assert code == 2 and "evil.pt" in caplog.text and "refused" in caplog.text
    assert "weights_only=False" not in caplog.text and "will likely succeed" not in caplog.text
    assert not os.path.exists("/tmp/personality_pwned")


def test_predict_out_naming_a_file_is_one_line(tmp_path, caplog):
    (tmp_path / "taken").write_text("mine")
    code = predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "taken")])
    assert code == 2 and "is not a folder" in caplog.text
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_read_only_data_folder_is_one_line_with_exit_1(tmp_path):
    """The stage's own entry point, as DVC runs it: no traceback, the path named."""
    if os.geteuid() == 0:  # root writes anywhere: simulate the read-only folder with a file
        (tmp_path / "data").write_text("not a folder")
    else:
        (tmp_path / "data").mkdir()
        os.chmod(tmp_path / "data", 0o500)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "stages.inputs"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "data" in out.stderr
