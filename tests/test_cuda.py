"""Training and scoring on CUDA, the way `train.device: auto` runs on a GPU machine: bf16 autocast,
channels_last, scores decoded from bf16 outputs. Skipped without CUDA (CI has none); run on a GPU
machine:

    python -m pytest -q tests/test_cuda.py       # ~30 s on an H200

The first H200 run of the default models (bench/train_default.py, docs/training.md) found failures
the CPU suite could not see: the classification head's decode of bf16 logits (perfex_cnn,
perfex_hybrid) and channels_last on audio_fn_linear's lazy layer before it had a shape; this file's
zoo test then found channels_last raising on the 3-D convolutions' 5-D weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data import AUSource, AUSourceConfig
from models.data_audio import AudioFnSource, AudioFnSourceConfig
from models.engine import TrainConfig, fit, place_model, predict_videos
from models.registry import build_model, list_models
from test_zoo import MODELS, TINY, _batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", MODELS)
def test_zoo_step_and_decode_under_bf16_autocast(name):
    """Every model: a bf16 training step in channels_last, then decode / proba of bf16 outputs."""
    torch.manual_seed(0)
    spec = next(m for m in list_models() if m["name"] == name)
    model = build_model(name, **TINY.get(name, {})).to(CUDA)
    batch = {k: v.to(CUDA) for k, v in _batch(spec).items()}
    model(batch)  # shapes the lazy layers
    place_model(model, [], [], CUDA, channels_last=True)  # as the engine does
    model.train()
    targets = torch.tensor([[0.2, 0.5, float("nan"), 0.9, 0.0],
                            [1.0, float("nan"), 0.3, 0.4, 0.6]], device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.loss(model(batch), targets)
    loss.backward()
    assert torch.isfinite(loss), name
    model.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(batch)
    scores, proba = model.decode(outputs), model.proba(outputs)
    assert scores.shape == (2, 5) and torch.isfinite(scores.float()).all(), name
    assert proba is None or torch.isfinite(proba.float()).all(), name


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=3, lr=1e-2, batch_size=16, views_per_video=2, patience=0,
                                 seed=3, device="cuda", amp=True, channels_last=True), **kw})


def _fit_and_predict(model, sources, ids, y):
    fit(model, sources, train_ids=ids[:24], train_targets=y[:24], val_ids=ids[24:],
        val_targets=y[24:], config=_cfg(), meta={"model_name": "cuda_test"})
    preds = predict_videos(model, sources, ids, device=CUDA, amp=True)  # (n, 5)
    assert preds.shape == (len(ids), 5) and np.isfinite(preds).all()
    assert ((preds >= 0) & (preds <= 1)).all()


def test_fit_classification_head_on_cuda():
    rng = np.random.default_rng(0)
    seqs = {f"v{i:02d}": rng.uniform(0, 5, (int(rng.integers(12, 31)), 17)) for i in range(32)}
    ids = sorted(seqs)
    model = build_model("perfex_cnn", channels=(8, 16), hidden=16, head="classification")
    _fit_and_predict(model, [AUSource(seqs, config=AUSourceConfig(seq_len=24))], ids,
                     rng.uniform(0, 1, (32, 5)))


def test_fit_lazy_audio_functionals_model_on_cuda():
    rng = np.random.default_rng(1)
    ids = [f"v{i:02d}" for i in range(32)]
    data = {v: rng.normal(0, 1, 9).astype(np.float32) for v in ids}
    source = AudioFnSource(data, {}, [f"fn_{i}" for i in range(9)], AudioFnSourceConfig())
    _fit_and_predict(build_model("audio_fn_linear", hidden=0), [source], ids,
                     rng.uniform(0, 1, (32, 5)))


def test_full_precision_scores_on_cuda_are_the_cpus():
    """train scores its predictions on the GPU with amp off; predict scores on the CPU. With
    TF32 off for that (models/inference.py exact_float32) the two agree to float rounding; with
    cuDNN's default TF32 convolutions they need not."""
    rng = np.random.default_rng(2)
    seqs = {f"v{i:02d}": rng.uniform(0, 5, (int(rng.integers(12, 31)), 17)) for i in range(8)}
    ids = sorted(seqs)
    torch.manual_seed(0)
    model = build_model("perfex_cnn", channels=(32, 64), hidden=32).eval()
    sources = [AUSource(seqs, config=AUSourceConfig(seq_len=24))]
    cpu = predict_videos(model, sources, ids, device="cpu")
    place_model(model.to(CUDA), [], [], CUDA, channels_last=True)  # as train leaves it
    gpu = predict_videos(model, sources, ids, device=CUDA, amp=False)
    assert np.abs(gpu - cpu).max() <= 1e-5
