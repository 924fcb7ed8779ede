"""What retrain reports and leaves behind: val and test scored apart (val to choose retrain.* on,
test to report), intervals from evaluate's bootstrap params, frozen layers really fixed (BatchNorm
statistics too), the train stage's predictions layout (5-bin probabilities), and deploy naming a
retrained model as such. The small AU dataset of tests/test_retrain_deploy.py."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from personality.common import BaseParams, ParamsError
from personality.schemas import TRAITS
from stages import deploy, retrain
from tests.test_retrain_deploy import REPO, au_dataset, fit_perfex_cnn
from tests.test_retrain_deploy import trained  # noqa: F401  (a fixture: a trained perfex_cnn)

QUICK = retrain.RetrainParams(models=["perfex_cnn"], epochs=2, batch_size=8, mlflow=False)


def _predict(checkpoint, root, ids: list[str], **kw):
    """A checkpoint's predictions of `ids` as retrain and evaluate compute them."""
    from models import engine
    from models.data import build_sources, for_inference

    model, ckpt = engine.load_checkpoint(checkpoint)
    sources = build_sources(["aus", "aus_mask"], root=root, video_ids=ids,
                            config=for_inference(ckpt["source_config"]))
    return engine.predict_videos(model, sources, ids, **kw)


def test_val_and_test_are_reported_apart(trained, tmp_path, caplog):
    """Each held-out split's before/after is its own rated clips' figure (before: the base
    checkpoint's predictions of that split alone); the log names val as the one to choose on."""
    root = tmp_path / "r"
    shutil.copytree(trained, root)
    with caplog.at_level(logging.INFO, logger="retrain"):
        out = retrain.run(QUICK, BaseParams(seed=3, workers=1), root=root,
                          uncertainty=retrain.Uncertainty(bootstrap=200, ci_level=0.8))
    report = json.loads((root / "metrics/retrain.json").read_text())["perfex_cnn"]
    assert report == json.loads(json.dumps(out["perfex_cnn"]))
    assert "before" not in report and "after" not in report  # no pooled val + test figure
    manifest = pd.read_parquet(root / "data/manifest.parquet")
    rated = retrain.aggregate_ratings(pd.read_parquet(root / "data/user_study.parquet"))
    for split in ("val", "test"):
        ids = manifest.loc[manifest["split"] == split, "video_id"].tolist()
        expect = retrain._summary(rated.loc[ids, list(TRAITS)].to_numpy(float),
                                  _predict(trained / "data/models/perfex_cnn/best.pt", root, ids))
        block = report[split]
        assert block["n_clips"] == block["n_subjects"] == len(ids) == 12
        for k in ("ccc", "pcc", "mae"):
            assert block["before"][k] == pytest.approx(expect[k], abs=1e-9), (split, k)
        assert block["change"]["n_boot"] == 200 and block["change"]["ci_level"] == 0.8
        assert 0 <= block["change"]["p_lower_mae"] <= 1
    assert report["val"]["before"]["ccc"] != report["test"]["before"]["ccc"]
    assert "val (for choosing retrain.*)" in caplog.text
    assert "test (report only, never tuned on)" in caplog.text
    # the level is evaluate.ci_level: the same resamples at 95% give wider intervals
    wide = retrain.run(QUICK, BaseParams(seed=3, workers=1), root=root,
                       uncertainty=retrain.Uncertainty(bootstrap=200, ci_level=0.95))
    for when in ("before", "after"):
        for metric in ("ccc_ci", "mae_ci"):
            lo, hi = report["val"][when][metric]
            wlo, whi = wide["perfex_cnn"]["val"][when][metric]
            assert wlo <= lo < hi <= whi and (wlo, whi) != (lo, hi)


def test_the_stage_reads_evaluates_bootstrap_params(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("evaluate:\n  split: test\n  bootstrap: 50\n  ci_level: 0.9\n")
    assert retrain.evaluate_uncertainty(path) == retrain.Uncertainty(bootstrap=50, ci_level=0.9)
    path.write_text("evaluate: {}\n")
    assert retrain.evaluate_uncertainty(path) == retrain.Uncertainty(1000, 0.95)
    path.write_text("evaluate:\n  bootstrap: 0\n")
    with pytest.raises(ParamsError, match="evaluate.bootstrap"):
        retrain.evaluate_uncertainty(path)
    params = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["retrain"]["params"]
    assert {"evaluate.bootstrap", "evaluate.ci_level"} <= set(params)


def test_freeze_keeps_batchnorm_statistics(tmp_path):
    """retrain.freeze: the frozen convolutions of perfex_hybrid (masked BatchNorm after each)
    keep their whole state, running statistics and num_batches_tracked included; the rest
    trains."""
    torch.set_num_threads(1)
    fit_perfex_cnn(tmp_path, au_dataset(tmp_path), epochs=2, seed=3, model="perfex_hybrid",
                   fcn_channels=[16, 16], fcn_kernels=[5, 3], lstm_hidden=8, attention_dim=8,
                   se_reduction=4, hidden=16)
    before = torch.load(tmp_path / "data/models/perfex_hybrid/best.pt",
                        weights_only=False)["state_dict"]
    retrain.run(retrain.RetrainParams(models=["perfex_hybrid"], epochs=3, batch_size=8,
                                      freeze=["convs"], mlflow=False),
                BaseParams(seed=3, workers=1), root=tmp_path)
    after = torch.load(tmp_path / "data/retrained/models/perfex_hybrid+retrained/best.pt",
                       weights_only=False)["state_dict"]
    frozen = [k for k in before if k.startswith("convs.")]
    assert any(k.endswith(".running_var") for k in frozen)  # there are statistics to keep
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A 5-bin perfex_cnn (classification head), fine-tuned."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cls")
    fit_perfex_cnn(root, au_dataset(root), epochs=2, seed=3, head="classification",
                   channels=[8, 8], hidden=16)
    retrain.run(QUICK, BaseParams(seed=3, workers=1), root=root)
    return root


def test_retrained_predictions_keep_the_bin_probabilities(classifier):
    """The train stage's layout, proba_<T>_<k> included, so evaluate scores a retrained model's
    5-bin view from its probabilities as it does its base model's."""
    ids = pd.read_parquet(classifier / "data/manifest.parquet")["video_id"].tolist()
    preds, proba = _predict(
        classifier / "data/retrained/models/perfex_cnn+retrained/best.pt", classifier, ids,
        return_proba=True)
    written = pd.read_parquet(
        classifier / "data/retrained/predictions/perfex_cnn+retrained.parquet")
    assert proba is not None and "proba_N_4" in written
    np.testing.assert_allclose(written["proba_N_4"], proba[:, TRAITS.index("N"), 4], rtol=1e-6)
    from models.inference import predictions_table  # the layout train writes through too

    expect = predictions_table(ids, written["split"], preds, proba, "perfex_cnn+retrained")
    pd.testing.assert_frame_equal(written, expect, check_dtype=False, rtol=1e-6)


def test_deploy_names_a_retrained_model_as_such(classifier, caplog):
    """labels.parquet, the summary and the log say perfex_cnn+retrained, not the base's name,
    whether the model is given by name or by checkpoint path."""
    retrained = classifier / "data/retrained/models/perfex_cnn+retrained/best.pt"
    for model in ("perfex_cnn+retrained", str(retrained)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="deploy"):
            summary = deploy.run(deploy.DeployParams(model=model, export_csv=False),
                                 BaseParams(), root=classifier)
        assert "with perfex_cnn+retrained" in caplog.text
        labels = pd.read_parquet(classifier / "data/deploy/labels.parquet")
        assert summary["model"] == "perfex_cnn+retrained"
        assert (labels["model"] == "perfex_cnn+retrained").all()
    assert deploy.run(deploy.DeployParams(model="perfex_cnn", export_csv=False), BaseParams(),
                      root=classifier)["model"] == "perfex_cnn"
    assert np.isfinite(labels[list(TRAITS)].to_numpy()).all()


@pytest.mark.parametrize("bad, named", [({"lr": -1e-4}, "lr must be positive"),
                                        ({"weight_decay": -1e-4}, "weight_decay"),
                                        ({"batch_size": 0}, "batch_size")])
def test_a_bad_retrain_value_is_named_before_any_model_is_fine_tuned(tmp_path, bad, named):
    """`-S retrain.lr=-1e-4` (or a negative weight_decay, a batch_size of 0) failed inside each
    model's job, after the user-study data were read, as a traceback per model (torch's
    ValueError for the weight decay); now one ParamsError naming retrain, before any work (the
    folder here holds no data at all)."""
    params = retrain.RetrainParams(models=["perfex_cnn"], mlflow=False, **bad)
    with pytest.raises(ParamsError, match=f"retrain: .*{named}"):
        retrain.run(params, BaseParams(seed=1, workers=1), root=tmp_path, trained=["perfex_cnn"])
