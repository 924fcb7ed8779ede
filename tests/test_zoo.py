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
    "swin_face": dict(size=32, embed_dim=8, depths=(2, 2), heads=(2, 2)),
    "interpret_dan_face": dict(widths=(4, 8, 8), convs=(1, 1, 1)),
    "slow_fast_face_seq": dict(width=8, beta_inv=4), "tpn_face_seq": dict(width=4, neck_width=8),
    "spectrum_model": dict(widths=(4, 8, 8), n_samples=16, n_freq=9),
    "sphereface_face": dict(width=4, embed=16),
    "audio_interpret_net": dict(widths=(4, 8, 8), pools=(4, 4, 4)),
    "multi_modal_pred_net": dict(width=4, hidden=8, audio_hidden=(16, 8)),
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
    assert len(models) >= 27
    for m in models:
        assert m["card"] and "\n" not in m["card"], m["name"]
        assert m["inputs"], m["name"]
        assert all(k in SAMPLE_KEYS for k in m["inputs"]), (m["name"], m["inputs"])
    assert {m["modality"] for m in models} >= {"au", "visual", "audio", "audio-visual"}


def test_python_m_models_prints_one_line_per_registered_model(capsys):
    from models.__main__ import main

    assert main(["--modality", "audio"]) == 0
    lines = capsys.readouterr().out.splitlines()
    audio = [m["name"] for m in list_models(modality="audio")]
    assert [line.split()[0] for line in lines[:-1]] == audio
    assert lines[-1] == f"{len(audio)} models"


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


# torchvision's resnet18 (11,689,512 parameters) and resnet50 (25,557,032) without their
# 1000-way fc (512 * 1000 + 1000 and 2048 * 1000 + 1000)
RESNET18_TRUNK, RESNET50_TRUNK = 11_689_512 - 513_000, 25_557_032 - 2_049_000


def test_resnet_matches_torchvision_at_full_width():
    ours = build_model("resnet18_face", width=64).trunk
    assert sum(p.numel() for p in ours.parameters()) == RESNET18_TRUNK
    ours = build_model("resnet50_face", width=64).trunk
    assert sum(p.numel() for p in ours.parameters()) == RESNET50_TRUNK
    names = {n for n, _ in ours.named_parameters()}  # torchvision's keys, under `stages`
    assert {"stages.0.0.conv3.weight", "stages.0.0.downsample.1.bias"} <= names


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="widht"):
        build_model("resnet18_face", widht=8)


@pytest.mark.parametrize("name, key, value", [
    ("resnet18_face", "depth", 34), ("resnet50_face", "depth", 18), ("resnet18_frame", "depth", 50),
    ("seresnet18_face", "se", False), ("resnet18_face", "input_key", "frame"),
    ("dan_frame", "input_key", "face"), ("dan_face", "input_key", "frame")])
def test_a_field_the_name_fixes_is_refused_not_dropped(name, key, value):
    """train.model_config.resnet18_face.depth: 34 trained a ResNet-18 and recorded depth 18: the
    name's value replaced the asked one unseen. Now the params check names it; the name's own
    value (what a checkpoint's model_config holds) still builds."""
    from models.train_params import check_model_config
    from personality.common import ParamsError

    with pytest.raises(ParamsError, match=f"train.model_config.{name}: {name}: {key} is"):
        check_model_config(name, {key: value, **TINY[name]})
    fixed = dataclasses.asdict(build_model(name, **TINY[name]).config)[key]
    assert dataclasses.asdict(build_model(name, **{key: fixed}, **TINY[name]).config)[key] == fixed


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


# --------------------------------------------------------------------------------------------------
# the networks of issue #16: CAM maps, spectra, windows, pathways


@pytest.mark.parametrize("name,key,overrides", [
    ("interpret_dan_face", "face", {}),
    ("audio_interpret_net", "wave", {}),
    ("audio_interpret_net", "wave", {"domain": "frequency", "activation": "relu",
                                     "batch_norm": True}),
])
def test_cam_maps_are_per_trait_and_average_to_the_logit(name, key, overrides):
    torch.manual_seed(0)
    model = build_model(name, **{**TINY[name], **overrides}).eval()
    batch = _batch({"inputs": [key]})
    with torch.inference_mode():
        maps = model.cam(batch)
        scores = model.predict(batch)
    spatial = 2 if key == "face" else 1
    assert maps.dim() == 2 + spatial and maps.shape[:2] == (B, 5)
    assert all(s > 1 for s in maps.shape[2:]), maps.shape  # a map, not one pooled value
    assert torch.isfinite(maps).all()
    # the head is GAP + one linear layer: the maps' mean is exactly the pre-sigmoid score
    pooled = torch.sigmoid(maps.flatten(2).mean(dim=2))
    torch.testing.assert_close(pooled, scores, rtol=1e-5, atol=1e-6)


def test_cam_maps_move_where_the_input_changes():
    torch.manual_seed(0)
    model = build_model("interpret_dan_face", **TINY["interpret_dan_face"]).eval()
    x = torch.zeros(1, 3, 32, 32)
    y = x.clone()
    y[..., :8, :8] = 3.0  # a change in the top-left corner only
    with torch.inference_mode():
        diff = (model.cam({"face": y}) - model.cam({"face": x})).abs()[0].sum(dim=0)  # (h, w)
    assert diff[:2, :2].sum() > 0 and diff[-2:, -2:].sum() == 0


@pytest.mark.parametrize("name", ["interpret_dan_face", "audio_interpret_net"])
def test_cam_head_must_stay_linear(name):
    with pytest.raises(ValueError, match="hidden 0"):
        build_model(name, hidden=16)
    with pytest.raises(ValueError, match="CAM head"):
        build_model(name, head="classification")


def test_spectrum_of_known_series():
    from models.spectral import even_samples, spectrum

    n = 32
    t = torch.arange(n, dtype=torch.float32)
    x = torch.stack([torch.full((n,), 0.7), 0.4 * torch.cos(2 * torch.pi * 3 * t / n)], dim=1)
    spec = spectrum(x[None], n_freq=n // 2 + 1)  # (1, 2, 2, 17)
    amp = spec[0, 0]  # (2 channels, 17 bins)
    torch.testing.assert_close(amp[0, 0], torch.tensor(0.7))  # a constant: bin 0 = its mean
    assert amp[0, 1:].abs().max() < 1e-5
    torch.testing.assert_close(amp[1, 3], torch.tensor(0.2))  # cos: half its amplitude at bin 3
    assert amp[1, [0, 1, 2, 4, 5]].abs().max() < 1e-5
    assert spec[0, 1].abs().max() <= 1.0  # phase / pi
    # even sampling reads only real steps: padding after them changes nothing
    real = torch.rand(1, 20, 17)
    padded = torch.cat([real, torch.full((1, 12, 17), 9.0)], dim=1)
    mask = torch.arange(32)[None] < 20
    torch.testing.assert_close(even_samples(padded, mask, 16),
                               even_samples(real, torch.ones(1, 20, dtype=torch.bool), 16))


def test_spectrum_model_ignores_padding():
    torch.manual_seed(0)
    model = build_model("spectrum_model", **TINY["spectrum_model"]).eval()
    aus = torch.rand(1, 20, 17) * 5
    padded = torch.cat([aus, torch.zeros(1, 10, 17)], dim=1)
    with torch.inference_mode():
        a = model.predict({"aus": aus, "aus_mask": torch.ones(1, 20, dtype=torch.bool)})
        b = model.predict({"aus": padded, "aus_mask": torch.arange(30)[None] < 20})
    torch.testing.assert_close(a, b)


def test_swin_windows_and_shift_mask():
    from models.swin import shift_mask, window_partition, window_reverse

    x = torch.randn(2, 8, 8, 3)
    w = window_partition(x, 4)
    assert w.shape == (2, 4, 16, 3)
    torch.testing.assert_close(w[0, 1, 0], x[0, 0, 4])  # window 1 starts at column 4
    torch.testing.assert_close(window_reverse(w, 4, 8, 8), x)
    mask = shift_mask(8, 8, 4, 2, torch.device("cpu"))  # (4 windows, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region: no masking
    assert (mask[3] < 0).any() and (mask.diagonal(dim1=1, dim2=2) == 0).all()
    model = build_model("swin_face", **TINY["swin_face"])
    shifts = [b.shift for stage in model.stages for b in stage]
    assert shifts == [0, 2, 0, 0]  # stage 2's 4 x 4 map is one window: nothing to shift
    with pytest.raises(ValueError, match="32 px"):
        model({"face": torch.randn(1, 3, 64, 64)})


@pytest.mark.parametrize("T,alpha", [(6, 2), (5, 2), (7, 3)])
def test_slow_fast_pathways_align_in_time(T, alpha):
    model = build_model("slow_fast_face_seq", **{**TINY["slow_fast_face_seq"], "alpha": alpha})
    out = model.predict({"face_seq": torch.randn(2, T, 3, 32, 32)})
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_tpn_3d_backbone():
    model = build_model("tpn_face_seq", **{**TINY["tpn_face_seq"], "backbone": "3d"})
    batch = _batch({"inputs": ["face_seq"]})
    loss = model.loss(model(batch), torch.full((B, 5), 0.5))
    loss.backward()
    assert model.backbone.stem[0][0].weight.grad.abs().sum() > 0


def test_multi_modal_pred_net_averages_its_branches():
    torch.manual_seed(0)
    model = build_model("multi_modal_pred_net", **TINY["multi_modal_pred_net"]).eval()
    batch = _batch({"inputs": ["face", "logmel"]})
    with torch.inference_mode():
        out = model(batch)  # (B, 5, 2)
    assert out.shape == (B, 5, 2)
    torch.testing.assert_close(model.decode(out), out.mean(dim=2))
    targets = torch.full((B, 5), 0.5)
    expected = ((out[..., 0] - 0.5) ** 2).mean() + ((out[..., 1] - 0.5) ** 2).mean()
    torch.testing.assert_close(model.loss(out, targets), expected)


def test_sphereface_takes_any_crop_size():
    model = build_model("sphereface_face", **TINY["sphereface_face"]).eval()
    for size in (32, 48, 64):
        assert model.predict({"face": torch.randn(1, 3, size, size)}).shape == (1, 5)
