"""The training engine and the input-source registry on a tiny learnable synthetic AU task.

    .venv/bin/python -m pytest tests/test_engine.py -q      # CPU, one thread, ~15 s

The task: a clip's AU01 level sets trait O and its AU12 level trait E (the others are noise around
0.5), so a small CNN must beat the train-mean baseline (CCC 0) within a few epochs.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from models import engine
from models.data import (AUSource, AUSourceConfig, InputSource, SourceError, au_windows,
                         build_sources, register_source)
from models.engine import (EngineError, TrainConfig, collate, fit, load_checkpoint, load_weights,
                           merge_views, predict_videos, save_checkpoint)
from models.metrics import ccc
from models.registry import build_model

TINY = dict(kernel_sizes=(3,), channels=(8, 16), hidden=16, dropout=0.1, head="regression")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def make_task(n: int = 48, seed: int = 0):
    """AU sequences (T in 12..30) whose AU01 / AU12 levels carry traits O / E; NaN-holed frames."""
    rng = np.random.default_rng(seed)
    seqs, y = {}, np.full((n, 5), 0.5)
    for i in range(n):
        o, e = rng.uniform(0.1, 0.9, 2)
        T = int(rng.integers(12, 31))
        a = rng.uniform(0, 0.5, (T, 17))
        a[:, 0] += 4 * o + rng.normal(0, 0.2, T)  # AU01_r
        a[:, 8] += 4 * e + rng.normal(0, 0.2, T)  # AU12_r
        a[rng.random(T) < 0.1] = np.nan  # frames without a face
        seqs[f"v{i:03d}"] = a
        y[i, 0], y[i, 2] = o, e
        y[i, [1, 3, 4]] = 0.5 + rng.normal(0, 0.05, 3)
    ids = sorted(seqs)
    return AUSource(seqs, config=AUSourceConfig(seq_len=24)), ids, np.clip(y, 0, 1)


@pytest.fixture(scope="module")
def task():
    source, ids, y = make_task()
    return {"sources": [source], "train": (ids[:32], y[:32]), "val": (ids[32:40], y[32:40]),
            "test": (ids[40:], y[40:])}


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=15, lr=1e-2, batch_size=16, views_per_video=2, patience=0, seed=3,
                schedule="cosine", device="cpu")
    return TrainConfig(**{**base, **kw})


def train(task, tmp_path=None, fit_kw=None, **kw):
    torch.manual_seed(0)
    model = build_model("perfex_cnn", **TINY)
    result = fit(model, task["sources"], train_ids=task["train"][0], train_targets=task["train"][1],
                 val_ids=task["val"][0], val_targets=task["val"][1], config=cfg(**kw),
                 out_dir=tmp_path, **(fit_kw or {}), meta={"model_name": "perfex_cnn", "inputs": ["aus", "aus_mask"],
                                         "source_config": {"aus": {"seq_len": 24}},
                                         "params": {"epochs": kw.get("epochs", 15)}})
    return model, result


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    model, result = train(task, out)
    return model, result, out


# --------------------------------------------------------------------------------------------------
# sources


def test_au_source_pads_crops_and_masks():
    a = np.arange(40 * 17, dtype=float).reshape(40, 17) % 5
    a[3] = np.nan
    src = AUSource({"x": a, "short": a[:5]}, config=AUSourceConfig(seq_len=16))
    item = src.train_item("x", np.random.default_rng(0))
    assert item["aus"].shape == (16, 17) and item["aus_mask"].all()
    assert torch.isfinite(item["aus"]).all()
    again = src.train_item("x", np.random.default_rng(0))
    assert torch.equal(item["aus"], again["aus"])  # same rng state, same view
    short = src.eval_items("short")
    assert short["aus"].shape == (1, 16, 17) and short["aus_mask"].sum() == 5
    assert (short["aus"][0, 5:] == 0).all()
    full = src.eval_items("x")
    assert torch.equal(full["aus"][0, 4], torch.from_numpy(a[4]).float())  # the clip's start
    assert full["aus"][0, 3].eq(0).all() and full["aus_mask"][0, 3]  # NaN -> 0, still a real step
    assert au_windows(40, 16, 3) == [0, 12, 24]
    assert AUSource({"x": a}, config=AUSourceConfig(seq_len=16, eval_views=3)).eval_items(
        "x")["aus"].shape == (3, 16, 17)
    with pytest.raises(SourceError, match="nope"):
        src.eval_items("nope")
    assert src.has("x") and not src.has("nope")


def test_a_clip_without_a_face_in_any_frame_has_no_au_sequence():
    """All-NaN AUs are no face, not a neutral one: such a clip is neither trained on nor scored
    (predict refuses it the same way), and its augmented copies go with it."""
    faceless, some = np.full((20, 17), np.nan), np.full((20, 17), np.nan)
    some[7] = 1.0
    src = AUSource({"faceless": faceless, "some": some, "empty": np.zeros((0, 17))},
                   config=AUSourceConfig(seq_len=8, augmented=True),
                   augmented={"faceless": [faceless.copy()], "some": [faceless, some]})
    assert not src.has("faceless") and not src.has("empty") and src.has("some")
    assert "faceless" not in src.augmented and len(src.augmented["some"]) == 1


def test_augmented_pool_used_for_training_only():
    orig = np.zeros((10, 17))
    aug = [np.full((8, 17), 3.0)]
    src = AUSource({"x": orig}, config=AUSourceConfig(seq_len=12, augmented=True),
                   augmented={"x": aug})
    assert src.train_item("x", np.random.default_rng(0))["aus"][:8].eq(3.0).all()
    assert src.eval_items("x")["aus"].eq(0).all()


def test_build_sources_errors_and_registration(tmp_path):
    with pytest.raises(SourceError, match="'no_such_key'"):
        build_sources(["aus", "no_such_key"], root=tmp_path, video_ids=[], config={})
    with pytest.raises(SourceError, match="source_config.aus.bogus"):
        build_sources(["aus", "aus_mask"], root=tmp_path, video_ids=[],
                      config={"aus": {"bogus": 1}})

    class Const(InputSource):
        keys = ("test_const",)

        def __init__(self, config):
            self.value = config.get("value", 1.0)

        def train_item(self, video_id, rng):
            return {"test_const": torch.full((2,), self.value)}

        def eval_items(self, video_id):
            return {"test_const": torch.full((1, 2), self.value)}

        def fitted_config(self):
            return {}

    @register_source("test_const")
    def const_source(*, root, video_ids, config):
        return Const(config)

    (src,) = build_sources(["test_const"], root=tmp_path, video_ids=["a"],
                           config={"test_const": {"value": 2.0}})
    assert src.eval_items("a")["test_const"].eq(2.0).all()


class _FunctionalsSource:
    """A stand-in audio_fn source: 7 functionals per video (only what _materialize_lazy reads)."""

    def train_item(self, video_id: str, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"audio_fn": torch.ones(7)}


def test_place_model_shapes_lazy_layers_before_channels_last():
    """audio_fn_linear's first layer is lazy: converting its weights to channels_last before a
    forward shaped them failed on CUDA ('uninitialized parameter'), found by the H200 run."""
    model = build_model("audio_fn_linear", hidden=0)
    engine.place_model(model, [_FunctionalsSource()], ["v0"], torch.device("cpu"),
                       channels_last=True)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert tuple(linear.weight.shape) == (5, 7)


def test_place_model_puts_3d_convolutions_in_channels_last_3d():
    """model.to(memory_format=channels_last) raises on a 5-D weight: r3d, slow_fast and tpn could
    not train on CUDA with train.channels_last (found by tests/test_cuda.py on the H200)."""
    model = build_model("r3d_face_seq", width=4)
    engine.place_model(model, [], [], torch.device("cpu"), channels_last=True)
    weights = [p for p in model.parameters() if p.dim() == 5]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in weights)


def test_uint8_images_are_normalised_where_the_batch_lands():
    """The sources hand images over as uint8 (a quarter of the bytes through the loader workers
    and the host-to-device copy); to_device and, for a direct call, the model's pre-hook
    normalise them, so the model sees what the float path gave it."""
    from models.batching import IMAGENET_MEAN, IMAGENET_STD, to_device

    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    expected = (x.float() - mean) / std  # (2, 3, 32, 32): the sources' float path, bit for bit
    landed = to_device({"face": x, "aus": x.float()}, torch.device("cpu"), False)
    assert torch.equal(landed["face"], expected)
    assert torch.equal(landed["aus"], x.float())  # not an image key: as it came
    model = build_model("resnet18_face", width=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(model({"face": x}), model({"face": landed["face"]}))
        torch.testing.assert_close(model(batch={"face": x}), model({"face": landed["face"]}))


def test_classification_head_decodes_bf16_logits_in_float32():
    """Under bf16 autocast the logits are bf16 and decode ran outside it: softmax(bf16) @ the
    float32 bin values raised on CUDA. decode and proba now work in float32."""
    model = build_model("perfex_cnn", **{**TINY, "head": "classification"})
    logits = torch.randn(3, 5, 5).bfloat16()
    scores, proba = model.decode(logits), model.proba(logits)
    assert scores.dtype == proba.dtype == torch.float32
    torch.testing.assert_close(scores, model.decode(logits.float()))


def test_collate_pads_and_trims_to_longest_real_sequence():
    items = [{"aus": torch.ones(8, 17), "aus_mask": torch.arange(8) < n, "y": torch.zeros(3)}
             for n in (3, 5)]
    batch = collate(items)
    assert batch["aus"].shape == (2, 5, 17) and batch["aus_mask"].sum().item() == 8
    uneven = collate([{"x": torch.ones(2, 3)}, {"x": torch.ones(4, 3)}])
    assert uneven["x"].shape == (2, 4, 3) and uneven["x"][0, 2:].eq(0).all()
    merged = merge_views([{"a": torch.zeros(3, 2)}, {"b": torch.ones(1, 4)}])
    assert merged["b"].shape == (3, 4)
    # uneven view counts (9 full frames, 3 face crops): 3 evenly spaced frames, in time order
    merged = merge_views([{"frame": torch.arange(9.0)[:, None]}, {"face": torch.zeros(3, 1)},
                          {"logmel": torch.ones(1, 2)}])
    assert merged["frame"].flatten().tolist() == [0.0, 4.0, 8.0]
    assert merged["face"].shape == (3, 1) and merged["logmel"].shape == (3, 2)


# --------------------------------------------------------------------------------------------------
# training


def test_fit_beats_train_mean_baseline(task, trained):
    model, result, _ = trained
    ids, y = task["test"]
    pred = predict_videos(model, task["sources"], ids, batch_size=8)
    assert pred.shape == (len(ids), 5) and np.all((pred >= 0) & (pred <= 1))
    # the learnable traits (O from AU01, E from AU12) are well above the baseline's CCC of 0
    assert ccc(y[:, 0], pred[:, 0]) > 0.5 and ccc(y[:, 2], pred[:, 2]) > 0.5
    mse_model = np.mean((pred - y)[:, [0, 2]] ** 2)
    mse_base = np.mean((task["train"][1].mean(0) - y)[:, [0, 2]] ** 2)
    assert mse_model < 0.5 * mse_base
    assert [h["epoch"] for h in result["history"]] == list(range(1, 16))
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


def test_same_seed_same_predictions_and_metrics(task, trained):
    model_a, result_a, _ = trained
    model_b, result_b = train(task)
    ids = task["test"][0]
    np.testing.assert_array_equal(predict_videos(model_a, task["sources"], ids),
                                  predict_videos(model_b, task["sources"], ids))
    assert result_a["history"] == result_b["history"]


def test_checkpoint_loads_with_weights_only(task, trained):
    model, result, out = trained
    ckpt = torch.load(out / "best.pt", weights_only=True)
    for key in ("model_name", "model_config", "state_dict", "optimizer", "scheduler", "epoch",
                "best_epoch", "best_metric", "val_metric_name", "train_mean", "inputs",
                "source_config", "params", "label_scale"):
        assert key in ckpt, key
    assert ckpt["best_epoch"] == result["best_epoch"] and len(ckpt["train_mean"]) == 5
    np.testing.assert_allclose(ckpt["train_mean"], task["train"][1].mean(0))
    loaded, _ = load_checkpoint(out / "best.pt")
    ids = task["test"][0]
    np.testing.assert_array_equal(predict_videos(loaded, task["sources"], ids),
                                  predict_videos(model, task["sources"], ids))
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 15


def test_a_checkpoint_without_val_names_the_loss_it_kept(task, trained, tmp_path):
    """Fine-tuning on a user study has no val set: best_metric is then the negated training
    loss, and the checkpoint says so (it said "ccc" beside a value like -3.2)."""
    assert torch.load(trained[2] / "best.pt", weights_only=True)["val_metric_name"] == "ccc"
    torch.manual_seed(0)
    fit(build_model("perfex_cnn", **TINY), task["sources"], train_ids=task["train"][0],
        train_targets=task["train"][1], val_ids=[], val_targets=np.zeros((0, 5)),
        config=cfg(epochs=2), out_dir=tmp_path, meta={"model_name": "perfex_cnn"})
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["val_metric_name"] == "neg_train_loss" and ckpt["best_metric"] < 0


def test_resume_continues_exactly_where_it_stopped(task, tmp_path):
    model_a, straight = train(task, tmp_path / "a", epochs=4)
    _, paused = train(task, tmp_path / "b", epochs=4, fit_kw={"until_epoch": 2})
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(paused["history"]) == 2
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 2
    torch.manual_seed(123)  # resuming must not depend on the caller's RNG state
    model_b = build_model("perfex_cnn", **TINY)
    resumed = fit(model_b, task["sources"], train_ids=task["train"][0],
                  train_targets=task["train"][1], val_ids=task["val"][0],
                  val_targets=task["val"][1], config=cfg(epochs=4), out_dir=tmp_path / "b",
                  resume=tmp_path / "b" / "last.pt", meta={"model_name": "perfex_cnn"})
    assert resumed["epochs_run"] == 2
    # optimizer, scheduler, epoch and per-epoch randomness restored: the same run as one
    # that never stopped
    assert resumed["history"] == straight["history"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_into_another_model_config_is_one_line_naming_the_file(task, trained):
    """A resume with a changed model config (hidden 16 -> 24) raised torch's multi-line
    RuntimeError traceback from load_state_dict; train.weights said it in one line."""
    model = build_model("perfex_cnn", **{**TINY, "hidden": 24})
    with pytest.raises(EngineError, match=r"last\.pt: its weights do not fit the model being "
                                          r"trained .*'hidden': 16"):
        fit(model, task["sources"], train_ids=task["train"][0], train_targets=task["train"][1],
            val_ids=task["val"][0], val_targets=task["val"][1], config=cfg(),
            resume=trained[2] / "last.pt", meta={"model_name": "perfex_cnn"})


@pytest.mark.parametrize("change, key", [(dict(lr=0.5), "lr"), (dict(optimizer="sgd"), "optimizer"),
                                         (dict(val_metric="mae"), "val_metric"),
                                         (dict(epochs=6), "epochs"), (dict(gamma=0.5), "gamma")])
def test_resume_refuses_a_knob_the_restored_state_would_override(task, tmp_path, change, key):
    """-S train.lr=0.5 with train.resume trained on at the saved lr 0.01 (the optimizer's state
    brings its own) while the checkpoint's params and MLflow said 0.5; cosine kept its old length
    (the lr rose again after the old last epoch); a new val_metric compared the new metric with
    the kept best_metric of the old one."""
    import dataclasses

    first = cfg(epochs=4)
    meta = {"model_name": "perfex_cnn", "params": dataclasses.asdict(first)}
    fit(build_model("perfex_cnn", **TINY), task["sources"], train_ids=task["train"][0],
        train_targets=task["train"][1], val_ids=task["val"][0], val_targets=task["val"][1],
        config=first, out_dir=tmp_path, meta=meta, until_epoch=2)
    again = dataclasses.replace(first, **change)
    with pytest.raises(EngineError, match=f"last\\.pt: resume continues its run, which has {key} "):
        fit(build_model("perfex_cnn", **TINY), task["sources"], train_ids=task["train"][0],
            train_targets=task["train"][1], val_ids=task["val"][0], val_targets=task["val"][1],
            config=again, resume=tmp_path / "last.pt", meta=meta)
    # a longer run of a constant schedule continues as asked
    if change == dict(epochs=6):
        flat = dataclasses.replace(first, schedule="none")
        meta["params"] = dataclasses.asdict(flat)
        fit(build_model("perfex_cnn", **TINY), task["sources"], train_ids=task["train"][0],
            train_targets=task["train"][1], val_ids=task["val"][0], val_targets=task["val"][1],
            config=flat, out_dir=tmp_path, meta=meta, until_epoch=2)
        out = fit(build_model("perfex_cnn", **TINY), task["sources"], train_ids=task["train"][0],
                  train_targets=task["train"][1], val_ids=task["val"][0],
                  val_targets=task["val"][1], config=dataclasses.replace(flat, epochs=6),
                  resume=tmp_path / "last.pt", meta=meta)
        assert out["epochs_run"] == 4


def test_resume_without_the_best_weights_reports_the_weights_it_keeps(task, tmp_path):
    # lr ~0: epoch 1 stays the best; a resume from last.pt (epoch 3) moved to a folder without
    # best.pt has no weights of epoch 1, so the resumed epoch becomes the best, and best.pt says so
    _, paused = train(task, tmp_path / "b", epochs=3, lr=1e-12, schedule="none")
    assert paused["best_epoch"] == 1
    (tmp_path / "c").mkdir()
    shutil.copyfile(tmp_path / "b" / "last.pt", tmp_path / "c" / "resume.pt")
    model = build_model("perfex_cnn", **TINY)
    resumed = fit(model, task["sources"], train_ids=task["train"][0],
                  train_targets=task["train"][1], val_ids=task["val"][0],
                  val_targets=task["val"][1], config=cfg(epochs=3, lr=1e-12, schedule="none"),
                  out_dir=tmp_path / "c", resume=tmp_path / "c" / "resume.pt",
                  meta={"model_name": "perfex_cnn"})
    assert resumed["best_epoch"] == 3
    assert resumed["best_metric"] == paused["history"][2]["val_ccc"]
    best = torch.load(tmp_path / "c" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert best["best_epoch"] == 3
    for key, value in last["state_dict"].items():
        assert torch.equal(best["state_dict"][key], value)
        assert torch.equal(model.state_dict()[key], value)


def test_early_stopping_stops(task):
    # lr 0: nothing improves after epoch 1, so patience 2 stops at epoch 3
    _, result = train(task, epochs=20, patience=2, lr=1e-12, schedule="none")
    assert result["stopped_early"] and result["best_epoch"] == 1
    assert len(result["history"]) == 3


def test_weights_file_loads_strict_and_not(trained, tmp_path):
    model, _, out = trained
    fresh = build_model("perfex_cnn", **TINY)
    load_weights(fresh, out / "best.pt", strict=True)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # a bare state_dict works too
    load_weights(build_model("perfex_cnn", **TINY), tmp_path / "bare.pt")
    wider = build_model("perfex_cnn", **{**TINY, "hidden": 32})
    with pytest.raises(engine.EngineError, match="shape"):
        load_weights(wider, out / "best.pt", strict=True)
    report = load_weights(wider, out / "best.pt", strict=False)
    assert report["mismatched"] and not report["missing"]
    assert torch.equal(wider.branches[0].block1.conv.weight, model.branches[0].block1.conv.weight)


def test_evaluation_of_a_checkpoint_without_training(task, trained):
    model, _, out = trained
    loaded, ckpt = load_checkpoint(out / "best.pt")
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    metrics = engine.evaluate(loaded, task["sources"], *task["test"])
    assert metrics["ccc"] > 0.1 and set(engine.METRIC_MODES) <= set(metrics)
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())


class ViewSource(InputSource):
    """V = 3 views whose constant value is the view index: the model below echoes it."""

    keys = ("v",)

    def train_item(self, video_id, rng):
        return {"v": torch.zeros(1)}

    def eval_items(self, video_id):
        base = float(video_id)
        return {"v": torch.tensor([[base], [base + 0.3], [base + 0.6]])}  # (3, 1)

    def fitted_config(self):
        return {}


class Echo(torch.nn.Module):
    def forward(self, batch):
        return batch["v"].expand(-1, 5)  # (B, 5)

    def loss(self, outputs, targets):
        return outputs.mean()

    def decode(self, outputs):
        return outputs


def test_predict_videos_averages_views():
    pred = predict_videos(Echo(), [ViewSource()], ["0", "0.1"], batch_size=2)  # views split
    np.testing.assert_allclose(pred, [[0.3] * 5, [0.4] * 5], atol=1e-6)  # mean of +0, +.3, +.6


class LengthSource(InputSource):
    """One view per video, a sequence of ones as long as the video id says, no mask."""

    keys = ("v",)

    def train_item(self, video_id, rng):
        return {"v": torch.ones(int(video_id))}

    def eval_items(self, video_id):
        return {"v": torch.ones(1, int(video_id))}  # (1, T)

    def fitted_config(self):
        return {}


class TimeMean(Echo):
    def forward(self, batch):
        return batch["v"].mean(dim=1, keepdim=True).expand(-1, 5)  # (B, 5): 1 unless padded


def test_a_clip_is_never_padded_to_its_batch_mates_length():
    """Unmasked inputs of different lengths go in separate batches: zero padding would enter the
    model's pooling and make a clip's score depend on which clips share its batch."""
    pred = predict_videos(TimeMean(), [LengthSource()], ["3", "7", "7", "5"], batch_size=8)
    np.testing.assert_array_equal(pred, np.ones((4, 5)))


def test_save_checkpoint_is_plain_data(tmp_path):
    model = build_model("perfex_cnn", **TINY)
    path = save_checkpoint(tmp_path / "x.pt", model=model, model_name="perfex_cnn",
                           train_mean=np.full(5, 0.5), params={"a": (1, 2), "p": tmp_path})
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["params"] == {"a": [1, 2], "p": str(tmp_path)}
    assert ckpt["model_config"]["kernel_sizes"] == [3]
    rebuilt, _ = load_checkpoint(path)
    assert rebuilt.config == model.config


def test_exact_float32_turns_tf32_off_for_a_cuda_score_and_back_on_after():
    """The flags are process-wide: a full-precision score on a GPU turns TF32 off for itself
    only (tests/test_cuda.py checks the scores on a GPU machine); on the CPU nothing changes."""
    from models.inference import exact_float32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with exact_float32(torch.device("cuda")):
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        with exact_float32(torch.device("cpu")), exact_float32(torch.device("cuda"), False):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_initial_weights_shape_a_lazy_layer(tmp_path):
    """audio_fn_linear's nn.LazyLinear has no shape until it sees an input: train.weights read
    its shape and failed with torch's "Can't access the shape of an uninitialized parameter", a
    traceback, strict or not (a review found it). The stored tensor now shapes it."""
    import torch
    from torch import nn

    trained = nn.Sequential(nn.LazyLinear(3))
    trained(torch.ones(2, 7))  # shaped: (3, 7)
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    for strict in (True, False):
        fresh = nn.Sequential(nn.LazyLinear(3))
        load_weights(fresh, tmp_path / "weights.pt", strict=strict)
        assert torch.equal(fresh[0].weight, trained[0].weight)
