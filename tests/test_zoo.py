"""Every registered model: forward + backward on tiny CPU inputs built from its declared `inputs`,
decode in [0, 1], finite loss with NaN-masked targets, gradients reaching the first layer; the
registry's cards; weights round-trip."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from models.registry import SAMPLE_KEYS, build_model, list_models

torch.set_num_threads(1)

B = 2


def _inputs(key: str, g: torch.Generator) -> torch.Tensor:
    """A small input for sample key `key` (shapes as SAMPLE_KEYS documents)."""
    factories = {
        "face": lambda: torch.randn(B, 3, 32, 32, generator=g),
        "frame": lambda: torch.randn(B, 3, 32, 32, generator=g),
        "face_seq": lambda: torch.randn(B, 6, 3, 32, 32, generator=g),
        "logmel": lambda: torch.randn(B, 64, 48, generator=g),
        "wave": lambda: torch.randn(B, 4000, generator=g) * 0.1,
        "audio_fn": lambda: torch.randn(B, 20, generator=g),
        "aus": lambda: torch.rand(B, 30, 17, generator=g) * 5,
        "aus_mask": lambda: torch.arange(30)[None, :] < torch.tensor([[30], [20]]),
    }
    return factories[key]()


# tiny configs so that the whole zoo runs in seconds on one core; models not listed use defaults
TINY = {
    "resnet18_face": dict(width=4), "resnet34_face": dict(width=4, layers=(1, 1, 1, 1)),
    "resnet50_face": dict(width=4, layers=(1, 1, 1, 1)), "resnet18_frame": dict(width=4),
    "seresnet18_face": dict(width=4), "hrnet_face": dict(width=4),
    "dan_face": dict(widths=(4, 8)), "dan_frame": dict(widths=(4, 8)),
    "vat_face_seq": dict(width=4, d_model=16, n_heads=2, n_layers=1),
    "cnn_lstm_face_seq": dict(width=4, lstm_hidden=8), "r3d_face_seq": dict(width=4),
    "logmel_cnn": dict(widths=(4, 8)), "wave_resnet1d": dict(width=4),
    "audio_fn_linear": dict(), "bimodal_resnet": dict(width=4, layers=(1, 1, 1, 1),
                                                      audio_widths=(4, 8)),
    "bimodal_lstm": dict(width=4, audio_widths=(4,), lstm_hidden=8),
    "crnet": dict(width=4, layers=(1, 1, 1, 1), audio_widths=(4, 8), hidden=16),
    "perfex_cnn": dict(channels=(8, 8), hidden=16), "perfex_hybrid": dict(
        fcn_channels=(8, 8, 8, 8), lstm_hidden=8, attention_dim=8, hidden=16),
}
# the zoo trained by gradient steps; the closed-form classical models (models/classical.py: fitted,
# no parameters, no initial weights) have their own tests in tests/test_functionals.py
MODELS = [m["name"] for m in list_models() if m["inputs"] != ["functionals"]]


def _batch(spec: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: _inputs(k, g) for k in spec["inputs"]}


def _first_param(model: nn.Module) -> torch.nn.Parameter:
    return next(p for p in model.parameters() if not isinstance(p, nn.UninitializedParameter))


def test_registry_lists_the_zoo_with_one_line_cards():
    models = list_models()
    assert len(models) >= 10
    for m in models:
        assert m["card"] and "\n" not in m["card"], m["name"]
        assert m["inputs"], m["name"]
        assert all(k in SAMPLE_KEYS for k in m["inputs"]), (m["name"], m["inputs"])
    assert {m["modality"] for m in models} >= {"au", "visual", "audio", "audio-visual"}


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    torch.manual_seed(0)
    spec = next(m for m in list_models() if m["name"] == name)
    model = build_model(name, **TINY.get(name, {}))
    model.train()
    batch = _batch(spec)
    outputs = model(batch)  # materialises lazy layers before the gradient check
    targets = torch.tensor([[0.2, 0.5, float("nan"), 0.9, 0.0],
                            [1.0, float("nan"), 0.3, 0.4, 0.6]])
    loss = model.loss(outputs, targets)
    assert torch.isfinite(loss), name
    loss.backward()
    grad = _first_param(model).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    model.eval()
    with torch.inference_mode():
        scores = model.predict(batch)
    assert scores.shape == (B, 5)
    assert ((scores >= 0) & (scores <= 1)).all(), name


# crnet's classification branch is built in: only its regression_z head is another head
@pytest.mark.parametrize("name,head", [
    (name, head) for name in ["resnet18_face", "logmel_cnn", "bimodal_resnet", "crnet"]
    for head in ["classification", "regression_z"] if (name, head) != ("crnet", "classification")])
def test_other_heads(name, head):
    spec = next(m for m in list_models() if m["name"] == name)
    model = build_model(name, head=head, **TINY[name])
    out = model(_batch(spec))
    targets = torch.tensor([[-1.5, 0.2, float("nan"), 2.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    if head == "classification":
        targets = targets.clamp(0, 1)
    loss = model.loss(out, targets)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.decode(out).shape == (B, 5)


def test_resnet_matches_torchvision_at_full_width():
    import torchvision

    ours = build_model("resnet18_face", width=64).trunk
    ref = torchvision.models.resnet18(weights=None)
    n_ref = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == n_ref


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="widht"):
        build_model("resnet18_face", widht=8)


def test_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    spec = next(m for m in list_models() if m["name"] == "crnet")
    a = build_model("crnet", **TINY["crnet"]).eval()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": a.state_dict()}, path)
    torch.manual_seed(2)
    b = build_model("crnet", weights=str(path), **TINY["crnet"]).eval()
    batch = _batch(spec)
    with torch.inference_mode():
        assert torch.equal(a.predict(batch), b.predict(batch))
    # strict loading refuses another architecture; strict=False takes what fits
    with pytest.raises(ValueError, match="has shape"):  # the engine's loader names the tensor
        build_model("crnet", weights=str(path), **{**TINY["crnet"], "hidden": 32})
    partial = tmp_path / "visual.pt"
    torch.save({k: v for k, v in a.state_dict().items() if k.startswith("visual.")}, partial)
    with pytest.raises(ValueError, match="do not fit"):
        build_model("crnet", weights=str(partial), **TINY["crnet"])
    c = build_model("crnet", weights=str(partial), weights_strict=False, **TINY["crnet"])
    assert torch.equal(c.visual.stem[0].weight, a.visual.stem[0].weight)


def test_configs_are_dataclasses_with_weights_fields():
    for name in MODELS:
        model = build_model(name, **TINY.get(name, {}))
        cfg = model.config
        assert dataclasses.is_dataclass(cfg)
        if not name.startswith("perfex"):
            assert cfg.weights == "" and cfg.weights_strict is True
