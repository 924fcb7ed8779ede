"""The train stage end to end on the tiny synthetic dataset: frames -> faces -> aus -> augment ->
train for both PerFeX models, then test_only and resume through params. CPU, one thread, ~30 s.

    .venv/bin/python -m pytest tests/test_train_stage.py -q
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from personality.common import BaseParams, ParamsError, StageInputError, read_artifact
from personality.schemas import TRAITS
from stages.train import TrainParams, run
from tests.conftest import load_bench

MODELS = ["perfex_cnn", "perfex_hybrid"]
SMALL = {"perfex_cnn": {"channels": [8, 16], "hidden": 16},
         "perfex_hybrid": {"fcn_channels": [8, 16, 16, 16], "lstm_hidden": 8,
                           "attention_dim": 8, "hidden": 16}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def au_root(tiny_dataset, tmp_path_factory):
    """A copy of the tiny dataset with data/frames, faces, aus and augmented (default params)."""
    from stages import augment, aus, faces, frames

    root = tmp_path_factory.mktemp("train_stage")
    shutil.copytree(tiny_dataset / "data", root / "data")
    base = BaseParams(workers=1)
    frames.run(frames.FramesParams(), base, root=root)
    faces.run(faces.FacesParams(), base, root=root)
    aus.run(aus.AusParams(), base, root=root)
    augment.run(augment.AugmentParams(), base, root=root)
    return root


def params(**kw) -> TrainParams:
    base = dict(models=MODELS, epochs=3, batch_size=8, patience=0, mlflow=False, threads=1,
                views_per_video=2, model_config=SMALL)
    return TrainParams(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(au_root):
    return run(params(), BaseParams(workers=1), root=au_root)


def test_train_writes_checkpoints_predictions_and_metrics(au_root, trained):
    manifest = read_artifact("manifest", path=au_root / "data" / "manifest.parquet")
    for name in MODELS:
        for ckpt in ("best.pt", "last.pt"):
            data = torch.load(au_root / "data" / "models" / name / ckpt, weights_only=True)
            assert data["model_name"] == name and data["inputs"] == ["aus", "aus_mask"]
            assert len(data["train_mean"]) == 5 and data["params"]["epochs"] == 3
        pred = read_artifact("predictions", path=au_root / "data" / "predictions" / f"{name}.parquet")
        assert sorted(pred["video_id"]) == sorted(manifest["video_id"])  # every video has AUs
        assert (pred["model"] == name).all()
        merged = pred.merge(manifest[["video_id", "split"]], on="video_id", suffixes=("", "_m"))
        assert (merged["split"] == merged["split_m"]).all()
        vals = pred[list(TRAITS)].to_numpy()
        assert np.isfinite(vals).all() and vals.min() >= 0 and vals.max() <= 1
        proba = pred[[f"proba_{t}_{k}" for t in TRAITS for k in range(5)]].to_numpy()
        np.testing.assert_allclose(proba.reshape(-1, 5, 5).sum(-1), 1.0, atol=1e-5)
        summary = json.loads((au_root / "metrics" / "train" / f"{name}.json").read_text())
        assert summary["n_videos"] == manifest["split"].value_counts().to_dict()
        assert summary["test"]["baseline"]["ccc"] == 0.0
        assert set(summary["test"]["model"]) >= {"ccc", "mae", "acc", "bin_accuracy"}
        history = pd.read_csv(au_root / "metrics" / "train" / f"{name}_history.csv")
        assert history["epoch"].tolist() == [1, 2, 3]
        assert {"train_loss", "val_ccc", "lr"} <= set(history.columns)
    assert trained["perfex_cnn"]["best_epoch"] >= 1


def test_only_the_checkpoint_that_was_scored_carries_the_test_error(au_root, trained):
    """predict quotes a checkpoint's test_error (and evaluate's intervals around it): last.pt,
    other weights than the best epoch's, used to carry best.pt's figures."""
    for name in MODELS:
        best, last = (torch.load(au_root / "data" / "models" / name / f, weights_only=True)
                      for f in ("best.pt", "last.pt"))
        summary = json.loads((au_root / "metrics" / "train" / f"{name}.json").read_text())
        mae = {t: v["mae"] for t, v in summary["test"]["per_trait"].items()}
        assert best["test_error"] == pytest.approx(mae)
        same = all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
        assert last["test_error"] == (best["test_error"] if same else None)
    assert any(trained[n]["best_epoch"] < 3 for n in MODELS), "no model whose last epoch differs"


def test_metrics_say_what_hardware_trained_the_model(au_root, trained):
    """A CUDA run's scores differ from a CPU run's of the same seed (docs/training.md): the
    metrics name the device, so two runs' numbers are not taken for one."""
    import torch

    saved = json.loads((au_root / "metrics" / "train" / "perfex_cnn.json").read_text())
    assert saved["trained_on"] == trained["perfex_cnn"]["trained_on"]
    assert saved["trained_on"]["device"] == "cpu" and saved["trained_on"]["amp"] is False
    assert saved["trained_on"]["torch"] == torch.__version__ and saved["trained_on"]["name"]


def test_augmented_holds_train_clips_only(au_root):
    manifest = read_artifact("manifest", path=au_root / "data" / "manifest.parquet")
    aug = read_artifact("augmented", path=au_root / "data" / "augmented")
    train_ids = set(manifest.loc[manifest["split"] == "train", "video_id"])
    assert set(aug["video_id"]) == train_ids


def test_test_only_evaluates_the_checkpoint_without_training(au_root, trained):
    path = au_root / "data" / "models" / "perfex_cnn" / "best.pt"
    before = path.read_bytes()
    pred_before = pd.read_parquet(au_root / "data" / "predictions" / "perfex_cnn.parquet")
    out = run(params(test_only=True), BaseParams(workers=1), root=au_root,
              models=["perfex_cnn"])["perfex_cnn"]
    assert out["epochs_run"] == 0 and out["test_only"]
    assert path.read_bytes() == before
    pred_after = pd.read_parquet(au_root / "data" / "predictions" / "perfex_cnn.parquet")
    pd.testing.assert_frame_equal(pred_before, pred_after)


def test_test_only_refuses_a_checkpoint_trained_on_another_front_end(au_root, trained, tmp_path):
    """A checkpoint whose data were sampled at 5 fps, scored on data/'s 8 fps frames, gave
    numbers up to 0.08 from what predict (which runs the checkpoint's front-end) gives."""
    ckpt = torch.load(au_root / "data" / "models" / "perfex_cnn" / "best.pt", weights_only=True)
    ckpt["frontend"]["frames"]["fps"] = 5.0
    torch.save(ckpt, tmp_path / "elsewhere.pt")
    with pytest.raises(StageInputError, match=r"frames\.fps: 5\.0 \(the checkpoint.s\) "
                                              r"against 8\.0"):
        run(params(test_only=True, resume=str(tmp_path / "elsewhere.pt")),
            BaseParams(workers=1), root=au_root, models=["perfex_cnn"])


def test_test_only_reads_the_inputs_as_the_checkpoint_says(au_root, trained):
    """A checkpoint scored with test_only builds its inputs from the config and statistics it
    carries, as predict does, whatever params.yaml's source_config says now."""
    pred_before = pd.read_parquet(au_root / "data" / "predictions" / "perfex_cnn.parquet")
    run(params(test_only=True, source_config={"aus": {"scale": 0.5}}), BaseParams(workers=1),
        root=au_root, models=["perfex_cnn"])
    pred_after = pd.read_parquet(au_root / "data" / "predictions" / "perfex_cnn.parquet")
    pd.testing.assert_frame_equal(pred_before, pred_after)


def test_resume_and_weights_through_params(au_root, trained, tmp_path):
    saved = tmp_path / "last.pt"
    shutil.copyfile(au_root / "data" / "models" / "perfex_cnn" / "last.pt", saved)
    # its cosine schedule ended at epoch 3: a 4th epoch would train at lr 0 and the lr rise again
    with pytest.raises(Exception, match="which has epochs 3; the config says 4"):
        run(params(epochs=4, resume=str(saved)), BaseParams(workers=1), root=au_root,
            models=["perfex_cnn"])
    run(params(epochs=2, schedule="none"), BaseParams(workers=1), root=au_root,
        models=["perfex_cnn"])
    shutil.copyfile(au_root / "data" / "models" / "perfex_cnn" / "last.pt", saved)
    out = run(params(epochs=4, schedule="none", resume=str(saved)), BaseParams(workers=1),
              root=au_root, models=["perfex_cnn"])["perfex_cnn"]
    assert out["epochs_run"] == 2  # epochs 1-2 came from the checkpoint
    hist = pd.read_csv(au_root / "metrics" / "train" / "perfex_cnn_history.csv")
    assert hist["epoch"].tolist() == [1, 2, 3, 4]
    with pytest.raises(Exception, match="perfex_cnn checkpoint, not perfex_hybrid"):
        run(params(resume=str(saved)), BaseParams(workers=1), root=au_root,
            models=["perfex_hybrid"])
    out = run(params(epochs=1, weights=str(saved)), BaseParams(workers=1), root=au_root,
              models=["perfex_cnn"])["perfex_cnn"]
    assert out["epochs_run"] == 1


def test_test_only_on_its_own_last_pt_makes_it_the_models_best_and_refuses_a_killed_run(
        au_root, trained, tmp_path):
    """test_only of data/models/<name>/last.pt wrote predictions and metrics from its weights
    while best.pt (what predict, retrain, deploy and serve read) kept another epoch's, and the
    metrics named best.pt's epoch; a killed run's checkpoint (finished: False) came out marked
    finished, trusted from then on (a review found both)."""
    root = tmp_path / "r"
    shutil.copytree(au_root, root)
    folder = root / "data" / "models" / "perfex_cnn"
    last = torch.load(folder / "last.pt", weights_only=True)
    out = run(params(test_only=True, resume=str(folder / "last.pt")), BaseParams(workers=1),
              root=root, models=["perfex_cnn"])["perfex_cnn"]
    best = torch.load(folder / "best.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] == out["best_epoch"]
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    last["finished"] = False
    torch.save(last, tmp_path / "killed.pt")
    with pytest.raises(StageInputError, match="killed.pt: its training run did not finish"):
        run(params(test_only=True, resume=str(tmp_path / "killed.pt")), BaseParams(workers=1),
            root=root, models=["perfex_cnn"])


@pytest.mark.parametrize("changed, named", [
    ({"use_augmented": False}, "train.use_augmented: True (the checkpoint's) against False"),
    ({"source_config": {"aus": {"scale": 0.5}}}, "source_config: aus"),
    ({"seed": 999}, "train.seed: None (the checkpoint's) against 999")])
def test_resume_refuses_a_run_on_other_data_or_seed(au_root, trained, tmp_path, changed, named):
    """Resuming took a changed seed, augmentation or source option silently: the first epochs
    ran on the old terms and the checkpoint recorded only the new ones (a review found it)."""
    with pytest.raises(StageInputError, match=re.escape(named)):
        run(params(epochs=4, **changed,
                   resume=str(au_root / "data" / "models" / "perfex_cnn" / "last.pt")),
            BaseParams(workers=1), root=au_root, models=["perfex_cnn"])


def test_a_run_that_fails_half_way_leaves_the_old_model_folder_whole(au_root, trained,
                                                                      monkeypatch):
    """Checkpoints are written during the epochs, but into a temp folder that replaces
    data/models/<name> only at the end: a run that dies after its epochs changes nothing."""
    import stages.train as train_stage

    folder = au_root / "data" / "models" / "perfex_cnn"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def dies(*args, **kwargs):
        raise RuntimeError("killed after the epochs")

    monkeypatch.setattr(train_stage, "_summarize", dies)
    with pytest.raises(RuntimeError, match="killed after the epochs"):
        run(params(epochs=1, seed=7), BaseParams(workers=1), root=au_root, models=["perfex_cnn"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(folder.parent.glob(".*.tmp-*"))


def test_the_train_run_logs_the_processes_that_trained_not_the_launch_mode(monkeypatch,
                                                                          tmp_path):
    """MLflow's params said distributed: None whatever torchrun ran; now world_size says it."""
    import contextlib

    import personality.common as common
    import stages.train as train_stage

    logged = {}
    monkeypatch.setattr(common, "mlflow_run",
                        lambda stage, **kw: logged.update(kw) or contextlib.nullcontext())
    p = params(mlflow=True)
    cfg = train_stage.engine_config(p, BaseParams(workers=1))
    with train_stage._tracking(p, cfg, "perfex_cnn", {}, {"source_config": {}}, 0, 2, tmp_path):
        pass
    assert logged["params"]["world_size"] == 2 and logged["params"]["lr"] == p.lr
    assert "distributed" not in logged["params"]


def test_unknown_model_is_a_params_error(au_root):
    with pytest.raises(ParamsError, match="no_such_model"):
        run(params(models=["no_such_model"]), BaseParams(workers=1), root=au_root)


def test_params_match_params_yaml():
    """Every train: / augment: key of params.yaml is a field (the stages load it strictly)."""
    from stages.augment import AugmentParams
    from personality.common import load_params

    assert dataclasses.is_dataclass(load_params("train", TrainParams))
    assert dataclasses.is_dataclass(load_params("augment", AugmentParams))


def test_per_model_train_params(au_root):
    """train.model_config.<name>.train sets that model's solver params; the others keep train:."""
    from stages.train import for_model

    cfg = {**SMALL, "perfex_cnn": {**SMALL["perfex_cnn"], "train": {"epochs": 2, "lr": 0.01}}}
    p = params(model_config=cfg)
    mine, overrides = for_model(p, "perfex_cnn")
    assert (mine.epochs, mine.lr, mine.batch_size) == (2, 0.01, 8)
    assert "train" not in overrides and overrides["hidden"] == 16
    assert for_model(p, "perfex_hybrid")[0] == p
    out = run(p, BaseParams(workers=1), root=au_root, models=["perfex_cnn"])["perfex_cnn"]
    assert out["epochs_run"] == 2  # params() says 3
    ckpt = torch.load(au_root / "data/models/perfex_cnn/last.pt", weights_only=True)
    assert ckpt["params"]["lr"] == 0.01 and "train" not in ckpt["model_config"]
    # the checkpoint names exactly the train: keys its DVC stage tracks: `distributed`, a launch
    # mode `dvc repro` cannot see, was recorded as null whatever a later run was told
    import yaml
    from tests.conftest import REPO

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["do"]["params"]
    assert set(ckpt["params"]) == {k.split(".")[1] for k in stage
                                   if isinstance(k, str) and k.startswith("train.")}
    with pytest.raises(ParamsError, match="model_config.perfex_cnn.train.threads"):
        for_model(params(model_config={"perfex_cnn": {"train": {"threads": 2}}}), "perfex_cnn")
    with pytest.raises(ParamsError, match="train.lr"):
        for_model(params(model_config={"perfex_cnn": {"train": {"lr": "fast"}}}), "perfex_cnn")


def test_unlabelled_val_clips_are_left_out_of_validation():
    """An unlabelled val clip made every epoch's val CCC NaN and kept epoch 1 as the best."""
    import numpy as np
    import pandas as pd

    from stages.train import _labelled_val

    val = pd.DataFrame({"video_id": ["a", "b", "c"], **{t: [0.5, np.nan, 0.4] for t in "OCEAN"}})
    assert _labelled_val(val, "m")["video_id"].tolist() == ["a", "c"]
    assert _labelled_val(val.iloc[[1]], "m").empty


def test_train_default_bench_trains_in_a_scratch_root_and_reports_what_it_cannot(au_root, trained,
                                                                               tmp_path):
    """bench/train_default.py (the GPU rows of docs/training.md): the stage's own training on the
    pipeline's inputs, never over the pipeline's outputs; a model without its inputs is a row."""
    bench = load_bench("train_default")
    best = au_root / "data" / "models" / "perfex_cnn" / "best.pt"
    before = best.read_bytes()
    res = bench.main(["--device", "cpu", "--models", "perfex_cnn,audio_fn_linear",
                      "--data", str(au_root / "data"), "--out", str(tmp_path / "out.json")])
    ok, missing = res["rows"]
    assert ok["status"] == "ok" and ok["epochs_run"] >= 1 and np.isfinite(ok["val_ccc"])
    assert missing["status"].startswith("failed") and "audio" in missing["status"]
    assert best.read_bytes() == before  # the pipeline's checkpoint is untouched
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == res["rows"]


def test_a_training_stopped_mid_way_keeps_its_epochs_and_resumes_to_the_same_model(
        au_root, trained, monkeypatch):
    """Ctrl-C (or SIGTERM) at epoch 2 of 3 removed the temp model folder with every epoch in it:
    a long training stopped late began again from nothing. Now its checkpoints move to
    data/interrupted/<name>/, the model folder stays the last finished run's, and resuming
    from there gives the uninterrupted run's model to the bit. The best epoch so far comes from
    the resumed run's own best.pt (beside it), not from the model folder's, another run's."""
    import models.engine as engine

    p = params(epochs=3, schedule="none", seed=11)
    run(p, BaseParams(workers=1), root=au_root, models=["perfex_cnn"])
    preds = au_root / "data" / "predictions" / "perfex_cnn.parquet"
    whole = pd.read_parquet(preds)
    original = engine._checkpoint

    def stopped_after_epoch_2(t, state, name, epoch):
        original(t, state, name, epoch)
        if name == "last.pt" and epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_checkpoint", stopped_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(p, BaseParams(workers=1), root=au_root, models=["perfex_cnn"])
    monkeypatch.undo()
    kept = au_root / "data" / "interrupted" / "perfex_cnn"
    assert torch.load(kept / "last.pt", weights_only=True)["epoch"] == 2
    best = torch.load(kept / "best.pt", weights_only=True)
    # the model folder's best.pt: another run's weights under the same best epoch
    folder_best = au_root / "data" / "models" / "perfex_cnn" / "best.pt"
    other = {**best, "state_dict": {k: v + 0.5 if v.is_floating_point() else v
                                    for k, v in best["state_dict"].items()}}
    torch.save(other, folder_best)
    out = run(params(epochs=3, schedule="none", seed=11,
                     resume="data/interrupted/{model}/last.pt"),
              BaseParams(workers=1), root=au_root, models=["perfex_cnn"])["perfex_cnn"]
    assert out["epochs_run"] == 1
    pd.testing.assert_frame_equal(pd.read_parquet(preds), whole)
