"""Explanations: per clip (models/explain.py, predict's report) and per model (models/importance.py,
stages/explain.py).

    python -m pytest tests/test_explain.py -q -x       # ~1-2 min on one core

Grad-CAM: shapes and the generic layer choice on the zoo's visual models; a tiny CNN trained here
on images whose target lives in one region ("the mouth") has its map peak there, and the map
moves off when that region is blanked. Audio occlusion: real speech followed by digital silence
gives exactly 0 in the silent seconds (the silence constant is checked against stages/audio.py's
own features) and not in the speech. Linear contributions sum to the output minus the intercept;
integrated gradients to score(x) - score(0). Permutation importance, weighted statistics and the
planted-cue check on small cases whose answer is known; the stage end to end on a fake repo whose
labels follow the synthetic generator's law; predict writes `explanation` and draws it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from models.contributions import feature_contributions
from models.data_audio import LogmelSource, LogmelSourceConfig, WaveSource, WaveSourceConfig
from models.explain import (SILENCE_DB, audio_occlusion, cam_layer, clip_views, explain_clip,
                            gradcam, predict_views)
from models.registry import build_model
from personality.schemas import AU_INTENSITY, TRAITS
from tests.conftest import load_bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------------
# Grad-CAM


@pytest.mark.parametrize("name, config, inputs", [
    ("resnet18_face", {"width": 8, "layers": [1, 1, 1, 1]}, ("face",)),
    ("hrnet_face", {"width": 8}, ("face",)),
    ("bimodal_resnet", {"width": 8, "layers": [1, 1, 1, 1], "audio_widths": [8, 16, 32, 64]},
     ("face", "logmel")),
    ("swin_face", {}, ("face",)),  # channels last: (N, h, w, C)
])
def test_gradcam_shapes_and_layer(name, config, inputs, rng):
    torch.manual_seed(0)
    model = build_model(name, **config).eval()
    views = {"face": torch.from_numpy(rng.standard_normal((3, 3, 64, 64)).astype(np.float32))}
    if "logmel" in inputs:
        views["logmel"] = torch.from_numpy(rng.standard_normal((3, 64, 200)).astype(np.float32))
    layer = cam_layer(model, views, "face")
    maps, used = gradcam(model, views, "face")
    assert used == layer and maps.shape[0] == 5 and min(maps.shape[1:]) >= 4
    # a square crop's map is square: swin_face's (N, h, w, C) maps gave (4, 128), width x channels
    assert maps.shape[1] == maps.shape[2]
    assert np.all(maps >= 0) and np.isfinite(maps).all()
    if name == "resnet18_face":
        assert layer == "trunk.stages.2"  # 64 px: the /16 stage; the /32 one is 2 x 2
    if name == "bimodal_resnet":
        assert layer.startswith("visual.")  # never the log-mel branch's 2D maps
    if name == "swin_face":
        assert layer == "norm" and maps.shape[1:] == (4, 4)  # the last stage's 4 x 4 tokens
    assert all(p.requires_grad for p in model.parameters())  # restored after the search


class TinyCNN(nn.Module):
    """Conv net with global average pooling: it cannot know *where* a pattern is, only what."""

    inputs = ("face",)

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, batch):
        return torch.sigmoid(self.fc(self.body(batch["face"]).mean(dim=(2, 3))))

    def decode(self, out):
        return out


MOUTH = (slice(20, 28), slice(8, 24))  # rows, columns of a 32 x 32 image


def _faces(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Noise images with horizontal stripes of amplitude a in the mouth region: (n, 3, 32, 32),
    a (n,). Extraversion (E) = a; the other traits are constant."""
    x = rng.normal(0, 0.3, (n, 3, 32, 32)).astype(np.float32)
    a = rng.uniform(0, 1, n).astype(np.float32)
    stripes = np.where(np.arange(32) % 2 == 0, 1.0, -1.0)[:, None].astype(np.float32)  # (32, 1)
    x[:, :, MOUTH[0], MOUTH[1]] += a[:, None, None, None] * stripes[MOUTH[0]][None, None]
    return torch.from_numpy(x), a


def test_gradcam_uses_a_models_own_class_activation_maps(rng):
    """interpret_dan_face has its own CAM (`model.cam(batch)`, a dict like forward's); gradcam
    passed it the bare image tensor, which raised, and predict with explanations failed."""
    model = build_model("interpret_dan_face", widths=(4, 8, 8), convs=(1, 1, 1)).eval()
    views = {"face": torch.from_numpy(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))}
    maps, used = gradcam(model, views, "face")
    assert used == "model.cam" and maps.shape[0] == 5 and np.isfinite(maps).all()


def test_gradcam_peaks_on_the_region_that_drives_the_trait(rng):
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        x, a = _faces(32, rng)
        y = torch.full((32, 5), 0.5)
        y[:, 2] = torch.from_numpy(0.2 + 0.6 * a)
        loss = ((model({"face": x}) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, a = _faces(8, rng)
    x[:, :, MOUTH[0], MOUTH[1]] += 0.5 * torch.from_numpy(
        np.where(np.arange(32) % 2 == 0, 1.0, -1.0)[MOUTH[0], None].astype(np.float32))
    maps, layer = gradcam(model, {"face": x}, "face")
    e = maps[TRAITS.index("E")]  # (32, 32)
    inside = np.zeros_like(e, bool)
    inside[MOUTH] = True
    assert layer == "body" and e.shape == (32, 32)
    assert inside.flat[e.argmax()], "the map of E must peak on the mouth"
    assert e[inside].mean() > 3 * e[~inside].mean()
    blank = x.clone()
    blank[:, :, MOUTH[0], MOUTH[1]] = 0  # occlude the mouth
    moved, _ = gradcam(model, {"face": blank}, "face")
    assert moved[2][inside].mean() < 0.5 * e[inside].mean()


# --------------------------------------------------------------------------------------------------
# audio occlusion


@pytest.fixture(scope="module")
def speech_then_silence():
    """6 s: 2.9 s of real speech (tests/fixtures) then digital silence; its log-mel (64, T) from
    stages/audio.py's own features."""
    import soundfile as sf

    from stages.audio import AudioParams, frame_features
    from tests.conftest import real_fixture

    y, sr = sf.read(real_fixture("librivox_speech_16k.wav"), dtype="float32")
    assert sr == 16000
    wave = np.zeros(6 * sr, np.float32)
    wave[:int(2.9 * sr)] = y[:int(2.9 * sr)]
    logmel = frame_features(wave, AudioParams())["logmel"]  # (64, T), dB
    return wave, logmel


def test_silence_constant_is_the_audio_stage_s(speech_then_silence):
    _, logmel = speech_then_silence
    # frames past 3.0 s: no energy. librosa's float32 log10 of its floor gives -100 exactly on
    # some CPUs and -100.00001 on others (AMD EPYC, numpy's SIMD log): equal to a hair, not a bit
    assert np.allclose(logmel[:, 300:], SILENCE_DB, rtol=0, atol=1e-3)
    assert logmel[:, :280].max() > SILENCE_DB + 50


def _logmel_source(logmel, eval_mode="full"):
    mean, std = logmel[:, :290].mean(1), logmel[:, :290].std(1) + 1e-3  # "train" statistics
    src = LogmelSource({"clip": (logmel - mean[:, None]) / std[:, None]}, {},
                       LogmelSourceConfig(eval_mode=eval_mode, frames=300), 64)
    src.fitted = {"logmel": {"mean": mean.tolist(), "std": std.tolist()}}
    return src


def test_audio_occlusion_is_zero_where_the_clip_is_silent(speech_then_silence):
    _, logmel = speech_then_silence
    torch.manual_seed(0)
    model = build_model("logmel_cnn", widths=[8, 16, 32, 64]).eval()
    src = _logmel_source(logmel)
    out = audio_occlusion(model, [src], "clip", "logmel", step_s=0.01)
    delta = out["delta"]  # (5, 6)
    assert delta.shape == (5, 6) and list(out["seconds"]) == [0, 1, 2, 3, 4, 5]
    assert np.all(out["seen"] == 1.0)
    assert np.abs(delta[:, 3:]).max() < 1e-6  # silent seconds: muting changes nothing
    assert np.abs(delta[:, :3]).max() > 1e-4  # speech seconds move the scores
    mean_fill = audio_occlusion(model, [src], "clip", "logmel", step_s=0.01, baseline="mean")
    assert np.abs(mean_fill["delta"][:, 3:]).max() > 1e-4  # why silence is the default


def test_audio_occlusion_marks_seconds_outside_the_view(speech_then_silence):
    _, logmel = speech_then_silence
    torch.manual_seed(0)
    model = build_model("logmel_cnn", widths=[8, 16, 32, 64]).eval()
    out = audio_occlusion(model, [_logmel_source(logmel, "centre")], "clip", "logmel",
                          step_s=0.01)  # the model sees 1.5 - 4.5 s
    assert np.allclose(out["seen"], [0, 0.5, 1, 1, 0.5, 0])
    assert np.isnan(out["delta"][:, [0, 5]]).all() and np.isfinite(out["delta"][:, 1:5]).all()


def test_audio_occlusion_scores_only_heard_windows_a_few_at_a_time(speech_then_silence,
                                                                  monkeypatch):
    """Each muted copy of the clip holds all its V views (every face crop of an audio-visual
    model): before, every window's copy was built and scored in one call, seconds outside the
    model's view too (NaN anyway), so a 48 s clip with 384 face crops took 2 GB and a minute, a
    longer one the machine's memory. Now only heard windows are scored, OCCLUSION_BATCH views
    at a time, with the same deltas."""
    from models import explain

    _, logmel = speech_then_silence
    torch.manual_seed(0)
    model = build_model("logmel_cnn", widths=[8, 16, 32, 64]).eval()
    calls: list[dict] = []
    scored = explain.predict_views

    def recorded(net, views, **kwargs):
        calls.append({vid: len(next(iter(v.values()))) for vid, v in views.items()})
        return scored(net, views, **kwargs)

    monkeypatch.setattr(explain, "predict_views", recorded)
    out = audio_occlusion(model, [_logmel_source(logmel, "centre")], "clip", "logmel",
                          step_s=0.01)  # hears 1.5 - 4.5 s: windows 1 to 4
    assert not any({"w0", "w5"} & set(call) for call in calls)
    assert np.isnan(out["delta"][:, [0, 5]]).all() and np.isfinite(out["delta"][:, 1:5]).all()
    plain = _logmel_source(logmel)
    crops = LogmelSource(plain.data, {}, LogmelSourceConfig(eval_mode="crops", frames=200), 64)
    crops.fitted = plain.fitted  # V = 3 crops of 2 s, every second heard
    calls.clear()
    monkeypatch.setattr(explain, "OCCLUSION_BATCH", 10**6)
    whole = audio_occlusion(model, [crops], "clip", "logmel", step_s=0.01)
    monkeypatch.setattr(explain, "OCCLUSION_BATCH", 8)
    calls.clear()
    bounded = audio_occlusion(model, [crops], "clip", "logmel", step_s=0.01)
    assert max(sum(call.values()) for call in calls) <= 8  # 2 windows x 3 views at most
    assert np.allclose(bounded["delta"], whole["delta"], rtol=0, atol=1e-6)
    assert np.isfinite(bounded["delta"]).all() and bounded["delta"].shape == (5, 6)


def test_the_occlusion_strip_says_what_grey_means(speech_then_silence):
    """A report reader sees grey seconds only where the model does not hear the clip, and the
    axis says so; a model that hears every second gets no such note."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from personality.explain_plots import draw_occlusion

    _, logmel = speech_then_silence
    torch.manual_seed(0)
    model = build_model("logmel_cnn", widths=[8, 16, 32, 64]).eval()
    labels = []
    for mode in ("centre", "full"):
        out = audio_occlusion(model, [_logmel_source(logmel, mode)], "clip", "logmel", step_s=0.01)
        fig, ax = plt.subplots()
        draw_occlusion(ax, {"delta": [[None if np.isnan(v) else v for v in row]
                                      for row in out["delta"]], "window_s": 1.0}, TRAITS)
        labels.append(ax.get_xlabel())
        plt.close(fig)
    assert labels == ["time (s); grey: seconds outside the model's view", "time (s)"]


def test_the_audio_strip_lines_up_with_the_au_timeline(monkeypatch, tmp_path):
    """In predict's report the strip of seconds sits under the AU timeline on the same time
    span and at the same place on the page, so a second reads against the AUs above it."""
    from stages import predict_report

    figures = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, *args, **kwargs: figures.append(fig))
    t = np.arange(0, 8.95, 0.1)
    result = {**dict.fromkeys(TRAITS, 0.5), "model": "logmel_cnn", "video": "clip.mp4",
              "warnings": [], "_report": {"t": t, "aus": {"AU12_r": np.sin(t) + 1}},
              "explanation": {"kinds": ["audio_occlusion"], "audio_occlusion": {
                  "logmel": {"delta": [[None, 0.1, 0.2, -0.1, None, None, None, None, None]] * 5,
                             "window_s": 1.0}}}}
    predict_report.draw_report(result, tmp_path / "report.png")
    axes = {ax.get_title().split(" (")[0]: ax for ax in figures[0].axes}
    au, strip = axes["Action Units"], axes["audio occlusion"]
    assert au.get_xlim() == strip.get_xlim() == (0.0, 9.0)
    assert np.allclose([au.get_position().x0, au.get_position().x1],
                       [strip.get_position().x0, strip.get_position().x1])


def test_wave_occlusion(speech_then_silence):
    wave, _ = speech_then_silence
    torch.manual_seed(0)
    model = build_model("wave_resnet1d", width=8).eval()
    src = WaveSource({"clip": (wave * 32767).astype(np.int16)}, {}, {"clip": 1 / 32767},
                     WaveSourceConfig(eval_mode="full"))
    out = audio_occlusion(model, [src], "clip", "wave", step_s=1 / 16000)
    assert out["delta"].shape == (5, 6)
    assert np.abs(out["delta"][:, 3:]).max() < 1e-6 < np.abs(out["delta"][:, :3]).max()


# --------------------------------------------------------------------------------------------------
# feature contributions


def test_ridge_contributions_sum_to_output_minus_intercept(rng):
    model = build_model("functionals_ridge", n_features=6).eval()
    model.weight.copy_(torch.from_numpy(rng.normal(0, 0.05, (6, 5))))
    model.bias.copy_(torch.full((5,), 0.5, dtype=torch.float64))
    x = torch.from_numpy(rng.standard_normal((1, 6)).astype(np.float32))
    part = feature_contributions(model, {"functionals": x}, "functionals", list("abcdef"))
    values = np.asarray(part["values"])  # (6, 5)
    raw = model({"functionals": x}).numpy()[0]
    assert part["method"] == "linear" and values.shape == (6, 5)
    assert np.allclose(values.sum(axis=0), raw - part["intercept"], atol=1e-9)
    score = predict_views(model, {"clip": {"functionals": x}})[0]
    assert np.allclose(np.clip(values.sum(axis=0) + part["intercept"], 0, 1), score, atol=1e-6)


def test_audio_fn_linear_contributions_are_logits(rng):
    torch.manual_seed(0)
    model = build_model("audio_fn_linear", hidden=0, n_features=7).eval()
    x = torch.from_numpy(rng.standard_normal((1, 7)).astype(np.float32))
    part = feature_contributions(model, {"audio_fn": x}, "audio_fn", [f"fn_{i}" for i in range(7)])
    values = np.asarray(part["values"])
    score = predict_views(model, {"clip": {"audio_fn": x}})[0]
    assert part["units"] == "logit"
    assert np.allclose(1 / (1 + np.exp(-(values.sum(axis=0) + part["intercept"]))), score,
                       atol=1e-5)


def test_integrated_gradients_are_complete_for_an_au_model(rng):
    torch.manual_seed(0)
    model = build_model("perfex_cnn").eval()
    aus = torch.from_numpy(rng.uniform(0, 1, (1, 80, 17)).astype(np.float32))
    mask = torch.ones(1, 80, dtype=torch.bool)
    mask[:, 60:] = False
    aus[:, 60:] = 0
    part = feature_contributions(model, {"aus": aus, "aus_mask": mask}, "aus",
                                 list(AU_INTENSITY), ig_steps=64)
    assert part["method"] == "integrated_gradients" and np.asarray(part["values"]).shape == (17, 5)
    total = np.asarray(part["values"]).sum(axis=0)  # = score(x) - score(0) up to the gap
    assert np.abs(part["completeness_gap"]).max() < 0.05 * np.abs(total).max() + 1e-4
    # the report's panel says nothing of a gap this small; a share of the change left out, it
    # names (spectrum_model's phase, which the straight path from 0 never moves: ~10x its sum)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from personality.explain_plots import draw_contributions

    left_out = {**part, "values": np.zeros((17, 5)), "completeness_gap": [0, 0, 0.02, 0, 0]}
    titles = []
    for shown in (part, left_out):
        fig, ax = plt.subplots()
        draw_contributions(ax, shown, list("OCEAN"), title="t")
        titles.append(ax.get_title())
        plt.close(fig)
    assert titles == ["t [score]",
                      "t [score]; E: +0.020 of the score change +0.020 not accounted for"]


def test_trees_get_occlusion_and_find_the_feature_that_matters(rng):
    x = rng.standard_normal((80, 6))
    y = np.full((80, 5), 0.5)
    y[:, 0] = 0.5 + 0.15 * x[:, 3]
    model = build_model("functionals_gbt", max_trees=30, folds=2)
    model.fit(x, y, groups=np.arange(80) // 2)
    model.eval()
    clip = torch.tensor([[0, 0, 0, 2.0, 0, 0]], dtype=torch.float32)
    part = feature_contributions(model, {"functionals": clip}, "functionals", list("abcdef"))
    values = np.asarray(part["values"])
    assert part["method"] == "occlusion" and np.abs(values[:, 0]).argmax() == 3
    assert values[3, 0] > 0.1  # x_3 = 2 sd above the mean raises O by ~0.3


# --------------------------------------------------------------------------------------------------
# weighted statistics and permutation importance


def test_weighted_statistics_equal_resampled_ones(rng):
    from models.importance import bootstrap_weights, weighted_ccc, weighted_pearson
    from models.metrics import ccc

    subjects = np.repeat(np.arange(10), 3)
    y, p = rng.uniform(0, 1, (30, 5)), rng.uniform(0, 1, (30, 5))
    x = rng.standard_normal((30, 4))
    x[4, 1] = np.nan
    w = bootstrap_weights(subjects, n_boot=3, seed=1)
    rows = np.repeat(np.arange(30), w[0].astype(int))  # the resample as rows
    got = weighted_ccc(y, p, w)[0]
    assert np.allclose(got, [ccc(y[rows, k], p[rows, k]) for k in range(5)])
    stacked = np.stack([p, y, 1 - p]).reshape(3, 1, 30, 5)  # leading axes, as (F, R, n, K)
    many = weighted_ccc(y, stacked, w)  # (3, 3, 1, 5)
    assert many.shape == (3, 3, 1, 5) and np.allclose(many[:, 0, 0], weighted_ccc(y, p, w))
    assert np.allclose(many[:, 1, 0], 1.0)
    r = weighted_pearson(x, y, w)[0]  # (4, 5)
    keep = rows[rows != 4]
    assert np.isclose(r[1, 2], np.corrcoef(x[keep, 1], y[keep, 2])[0, 1])
    assert np.isclose(r[0, 2], np.corrcoef(x[rows, 0], y[rows, 2])[0, 1])


def test_permutation_importance_finds_the_planted_features(rng):
    from models.importance import (bootstrap_weights, permutation_importance,
                                   permuted_predictions, top_indices)

    model = build_model("functionals_ridge", n_features=6).eval()
    weight = np.zeros((6, 5))
    weight[1, 0], weight[4, 0], weight[2, 3] = 0.08, -0.06, 0.1
    model.weight.copy_(torch.from_numpy(weight))
    x = rng.standard_normal((40, 6)).astype(np.float32)
    views = {f"v{i}": {"functionals": torch.from_numpy(x[i:i + 1])} for i in range(40)}
    base = predict_views(model, views)
    y = base + rng.normal(0, 0.02, base.shape)
    perm = permuted_predictions(model, views, "functionals", repeats=10, seed=0)
    assert perm.shape == (6, 10, 40, 5)
    w = bootstrap_weights(np.arange(40) // 2, n_boot=50, seed=0)
    imp = permutation_importance(y, base, perm, w)
    assert set(top_indices(imp["value"], 2)[:, 0]) == {1, 4}
    assert top_indices(imp["value"], 1)[0, 3] == 2
    assert np.abs(imp["value"][[0, 3, 5], 0]).max() < 1e-9  # unused features: no drop
    assert np.all(imp["lo"] <= imp["value"] + 1e-12) and np.all(imp["value"] <= imp["hi"] + 1e-12)
    assert imp["samples"].shape == (50, 6, 5)


def test_channel_permutation_keeps_each_clip_s_length(rng):
    from models.importance import permuted_predictions

    class Probe(nn.Module):  # the score is the mean of AU01 over the clip's real steps
        def forward(self, batch):
            m = batch["aus_mask"].float()
            mean = (batch["aus"][..., 0] * m).sum(1) / m.sum(1)
            return mean[:, None].expand(-1, 5)

        def decode(self, out):
            return out

    views = {}
    for i, n in enumerate((10, 30)):
        aus = torch.zeros(1, 40, 17)
        aus[0, :n, 0] = float(i + 1)  # clip 0: AU01 = 1 on 10 steps, clip 1: 2 on 30 steps
        mask = torch.zeros(1, 40, dtype=torch.bool)
        mask[0, :n] = True
        views[f"c{i}"] = {"aus": aus, "aus_mask": mask}
    perm = permuted_predictions(Probe(), views, "aus", repeats=12, seed=3)  # (17, 12, 2, 5)
    swapped = perm[0, :, :, 0]  # AU01 channel
    assert set(np.round(swapped[:, 0], 6)) <= {1.0, 2.0}  # clip 0 takes 10 of clip 1's steps
    assert set(np.round(swapped[:, 1], 6)) <= {2.0, round(1 / 3, 6)}  # clip 1: 10 of 30 at 1
    assert np.all(perm[1:] == perm[1:2, :1, :, :])  # other channels: the model reads none
    from models.importance import _views_path  # the engine's path gives the same numbers

    perms = [np.random.default_rng(3).permutation(2) for _ in range(1)]
    slow = _views_path(Probe(), views, list(views), "aus", perms, [0])  # (1, 2, 5)
    assert set(np.round(slow[0, :, 0], 6)) in ({1.0, 2.0}, {2.0, round(1 / 3, 6)})


# --------------------------------------------------------------------------------------------------
# the cue check


def test_feature_clusters_put_proxies_of_one_signal_together(rng):
    from models.importance import feature_clusters

    latent = rng.standard_normal((80, 3))
    proxies = np.repeat(latent, 4, axis=1) + rng.normal(0, 0.2, (80, 12))  # 4 per signal
    proxies[:, 1] = np.exp(proxies[:, 1])  # monotone: Spearman still groups it
    proxies[5, 2] = np.nan  # a clip without that feature
    x = np.column_stack([proxies, rng.standard_normal((80, 2)), np.ones(80)])  # + noise, constant
    clusters, medoids = feature_clusters(x, 0.3)
    assert [0, 1, 2, 3] in clusters and [4, 5, 6, 7] in clusters and [8, 9, 10, 11] in clusters
    assert [12] in clusters and [13] in clusters and [14] in clusters and len(clusters) == 6
    assert all(m in c for m, c in zip(medoids, clusters))
    assert len(feature_clusters(x, 0.0)[0]) == 15  # a cut at 0: every column alone


def test_cluster_cue_is_the_cue_most_members_measure():
    from personality.cue_check import cluster_cue

    assert cluster_cue(["fn_rms_db_mean", "fn_logmel_03_mean", "egemaps_loudness_sma3_amean",
                        "fn_voiced_onsets_per_s"]) == "loudness"
    assert cluster_cue(["fn_logmel_03_mean", "fn_mfcc_01_std"]) == ""
    # a tie names nothing: the cluster is about neither cue (it was brow_lower by rule order)
    assert cluster_cue(["AU17_r_p90", "AU14_r_mean", "AU04_r_p50", "AU45_r_p50"]) == ""
    assert cluster_cue(["AU17_r_p90", "AU04_r_p50", "AU04_r_p90", "AU45_r_p50"]) == "brow_lower"


def test_cue_mapping():
    from personality.cue_check import cue_of

    assert cue_of("AU12_c_share") == "smile" and cue_of("AU06_r_p90") == "smile"
    assert cue_of("AU04_r_mean") == "brow_lower" and cue_of("blink_rate") == "blink_rate"
    assert cue_of("head_speed_p90") == "head_motion" and cue_of("fn_rms_db_mean") == "loudness"
    assert cue_of("fn_voiced_onsets_per_s") == "speech_rate" and cue_of("fn_f0_std") == "pitch_var"
    assert cue_of("fn_rms_db_std") == "" and cue_of("fn_logmel_03_mean") == ""
    assert cue_of("AU45_c_share") == "blink_rate" and cue_of("AU25_r_mean") == ""


def test_measured_cues_follow_the_data_not_the_names(rng):
    from personality.cue_check import measured_cues

    latent = rng.standard_normal((80, 3))
    x = np.stack([latent[:, 1] * 3 + rng.normal(0, 0.3, 80),  # follows cue b
                  -np.exp(latent[:, 2]),  # follows cue c, negatively, monotone
                  rng.standard_normal(80),  # follows nothing
                  np.ones(80)], axis=1)  # constant
    x[::7, 0] = np.nan  # a clip without a face
    found, r = measured_cues(x, latent, ["a", "b", "c"], min_r=0.5)
    assert found == ["b", "c", "", ""]
    assert r[0] > 0.9 and r[1] == pytest.approx(1.0) and r[2] < 0.5 and r[3] == 0.0


def test_cue_check_logic():
    from personality.cue_check import cue_check, planted_cues

    cues = ["smile", "loudness", "head_motion", "pause"]
    weights = np.array([[0.5, -0.4, 0.3, 0.1]] * 5)  # every trait: smile, loudness, head_motion
    assert planted_cues(weights, cues)[0] == ["smile", "loudness", "head_motion"]
    features = ["AU12_c_share", "fn_rms_db_mean", "head_yaw_sd", "fn_logmel_00_mean",
                "fn_mfcc_01_std", "fn_active_frac", "AU25_r_mean"]
    value = np.zeros((7, 5))
    value[:, 0] = [0.9, 0.8, 0.0, 0.7, 0.6, 0.5, 0.4]  # O: smile + loudness in the top 5: pass
    value[:, 1] = [0.1, 0.0, 0.0, 0.9, 0.8, 0.7, 0.6]  # C: only smile (5th): 1 hit, fail
    samples = np.stack([value, value[:, ::-1]])  # (2, 7, 5); resample 1: C's order as O's
    samples[1][:, 1] = value[:, 0]
    out = cue_check({"value": value, "samples": samples}, features, weights, cues)
    assert out["O"]["hits"] == 2 and out["O"]["pass"] and out["O"]["share_pass"] == 1.0
    assert out["C"]["hits"] == 1 and not out["C"]["pass"] and out["C"]["share_pass"] == 0.5
    assert out["O"]["top"][:2] == ["AU12_c_share", "fn_rms_db_mean"]
    # chance: of the 21 draws of 5 of these 7 features, 3 hit at most one of smile/loudness/
    # head_motion (4 features measure none of them)
    assert out["O"]["chance_pass"] == pytest.approx(18 / 21) and out["O"]["need"] == 2


def test_chance_of_passing_is_counted_exactly():
    """chance_pass was the share of 2000 random draws; it is now the exact count, the
    hypergeometric tail where each feature is one cue, checked here against every k-subset."""
    from itertools import combinations

    from personality.cue_check import chance_pass

    ten = [f"c{i}" for i in range(10)]
    assert chance_pass(ten, ten[:3], 3, 2) == pytest.approx(22 / 120)  # the 10 cues' 18%
    assert chance_pass(ten[2:], ten[:3], 3, 2) == 0.0  # 2 of the 3 planted cues unread
    rng = np.random.default_rng(3)
    for _ in range(50):  # clusters: several features per cue, some none
        measures = list(rng.choice(["a", "b", "c", "d", ""], size=int(rng.integers(1, 9))))
        k, need = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        subsets = list(combinations(measures, min(k, len(measures))))
        want = np.mean([sum(c in s for c in "abc") >= need for s in subsets])
        assert chance_pass(measures, list("abc"), k, need) == pytest.approx(want, abs=1e-12)


def _by_cue_report(cues: list[str]) -> dict:
    """A report as stages/explain.py writes it for one model whose functionals measure `cues`
    (one functional each, importance falling in that order), with its by-cue check."""
    from personality.cue_check import cue_checks
    from personality.synthetic import CUES, LABEL_WEIGHTS
    from stages.explain import _top

    features = [CUE_FEATURES[c] for c in cues]
    value = np.tile(np.linspace(0.3, 0.1, len(cues))[:, None], (1, 5))  # (F, 5)
    imp = {"value": value, "lo": value - 0.05, "hi": value + 0.05, "samples": value[None]}
    perm = {"features": features, "importance": imp, "cues": cues, "cue_importance": imp}
    checks, _ = cue_checks(perm, (LABEL_WEIGHTS, list(CUES)), 5)
    r = {"value": np.zeros((1, 5)), "lo": np.zeros((1, 5)), "hi": np.zeros((1, 5))}
    entry = {"n_clips": 10, "top_r_prediction": _top(r, ["x"], 1),
             "permutation": {"split": "val", "n_clips": 10, "repeats": 2,
                             "top": _top(imp, features, 5), "cues": _top(imp, cues, len(cues))}}
    return {"params": {"ci_level": 0.95, "correlation_splits": ["val"], "measured_cue_r": 0.5},
            "labels": {"n_clips": 10},
            "models": {"m": entry}, **{kind: {"m": check} for kind, check in checks.items()}}


def test_the_by_cue_check_prints_the_chance_of_the_cues_the_model_reads():
    """explain.md's by-cue table said 'the three most important of the 10 cues; chance of >= 2
    hits: 18%' whatever the model read: a model whose functionals measure 4 cues has another
    chance per trait (E: loudness and smile among the 4, 2 of 4 draws of 3 hit both; O: none of
    its planted cues, 0%)."""
    from personality.explain_report import markdown

    report = _by_cue_report(["smile", "loudness", "head_motion", "pause"])
    grouped = report["cue_check_grouped"]["m"]
    assert grouped["E"]["chance_pass"] == pytest.approx(0.5) and grouped["O"]["chance_pass"] == 0
    text = markdown(report)
    table = text[text.index("**Cue check by cue, m**"):].split("\n\n")[:2]
    assert "the 3 most important of the 4 cues its functionals measure" in table[0]
    assert "10 cues" not in text and "18%" not in text
    rows = {row.split(" | ")[0].strip("| "): row.split(" | ") for row in table[1].splitlines()[2:]}
    assert rows["E"][-1] == "50% |" and rows["O"][-1] == "0% |"
    assert "top 3 cues: CCC drop [95% CI] | hits | ≥ 2 | share of resamples | chance |" \
        in table[1]
    ten = markdown(_by_cue_report(list(CUE_FEATURES)))  # every cue: the hypergeometric 18%
    assert "most important of the 10 cues" in ten and "| 18% |" in ten


# --------------------------------------------------------------------------------------------------
# the stage, end to end on a fake repo that follows the generator's law


CUE_FEATURES = {"smile": "AU12_c_share", "brow_raise": "AU01_r_mean", "brow_lower": "AU04_r_p90",
                "blink_rate": "blink_rate", "head_motion": "head_yaw_sd",
                "pitch": "fn_f0_p50", "pitch_var": "fn_f0_std", "loudness": "fn_rms_db_mean",
                "speech_rate": "fn_voiced_onsets_per_s", "pause": "fn_active_frac"}


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory):
    """data/manifest, data/functionals, a fitted functionals_ridge and its predictions: labels
    follow personality/synthetic.py's LABEL_WEIGHTS over one functional per cue, plus noise
    features; 60 subjects of 3 clips (40 / 10 / 10 by split)."""
    from models.classical import fit_closed_form
    from models.data import build_sources, for_inference
    from models.engine import load_checkpoint, predict_videos
    from personality.common import write_artifact
    from personality.synthetic import CUES, LABEL_WEIGHTS

    root = tmp_path_factory.mktemp("explain_repo")
    rng = np.random.default_rng(5)
    n = 180
    subject = np.repeat(np.arange(60), 3)
    z = rng.standard_normal((60, 10))[subject] * 0.8 + rng.standard_normal((n, 10)) * 0.6
    unit = LABEL_WEIGHTS / np.linalg.norm(LABEL_WEIGHTS, axis=1, keepdims=True)
    labels = np.clip(0.5 + 0.13 * z @ unit.T + rng.normal(0, 0.03, (n, 5)), 0, 1)
    ids = [f"v{i:03d}" for i in range(n)]
    split = np.where(subject < 40, "train", np.where(subject < 50, "val", "test"))
    manifest = pd.DataFrame({"video_id": ids, "path": [f"{v}.mp4" for v in ids], "split": split,
                             "subject_id": [f"s{s}" for s in subject], "dataset": "synthetic",
                             **{t: labels[:, j] for j, t in enumerate(TRAITS)},
                             "duration_s": 8.0, "fps": 25.0, "has_audio": True})
    write_artifact("manifest", manifest, path=root / "data" / "manifest.parquet")
    fn = {CUE_FEATURES[c]: z[:, k] * 2 + 3 for k, c in enumerate(CUES)}
    fn.update({f"fn_logmel_{i:02d}_mean": rng.standard_normal(n) for i in range(5)})
    fn.update(AU12_r_mean=fn["AU12_c_share"] + rng.normal(0, 1, n),  # the schema's columns
              AU12_onsets_per_s=rng.standard_normal(n), head_speed_mean=rng.standard_normal(n),
              face_share=np.ones(n))
    write_artifact("functionals", pd.DataFrame({"video_id": ids, **fn}),
                   path=root / "data" / "functionals" / "functionals.parquet")
    write_artifact("synthetic_cues", pd.DataFrame(  # what ingest writes beside the clips
        {"video_id": ids, "subject_id": [f"s{s}" for s in subject],
         **{f"cue_{c}": z[:, k] for k, c in enumerate(CUES)}}),
        path=root / "data" / "synthetic_cues.parquet")
    train = [v for v, s in zip(ids, split) if s == "train"]
    sources = build_sources(["functionals"], root=root, video_ids=ids)
    model = build_model("functionals_ridge")
    out = root / "data" / "models" / "functionals_ridge"
    fit_closed_form(model, sources, train_ids=train, train_targets=labels[split == "train"],
                    groups=subject[split == "train"], out_dir=out,
                    meta={"model_name": "functionals_ridge", "inputs": ["functionals"],
                          "source_config": for_inference({}, sources)})
    net, _ = load_checkpoint(out / "best.pt")
    pred = predict_videos(net, sources, ids)
    (root / "data" / "predictions").mkdir(parents=True)
    pd.DataFrame({"video_id": ids, "split": split, **{t: pred[:, j] for j, t in enumerate(TRAITS)},
                  "model": "functionals_ridge"}).to_parquet(
        root / "data" / "predictions" / "functionals_ridge.parquet")
    return root


def test_explain_stage_end_to_end(fake_repo):
    from stages.explain import ExplainParams, run

    params = ExplainParams(repeats=5, bootstrap=50, mlflow=False)
    report = run(params, root=fake_repo, models=["functionals_ridge"])
    entry = report["models"]["functionals_ridge"]
    assert entry["n_clips"] == 60  # val + test clips correlated
    imp = entry["permutation"]  # importance: 30 val clips + 120 train clips, cross-fitted
    assert (imp["n_clips"], imp["n_val"], imp["crossfit_folds"]) == (150, 30, 5)
    check = report["cue_check"]["functionals_ridge"]
    assert all(c["pass"] for c in check.values()), check  # the law is linear: ridge recovers it
    assert all(c["pass"] for c in report["cue_check_columns"]["functionals_ridge"].values())
    clusters = entry["permutation"]["clusters"]  # AU12_r_mean is AU12_c_share plus noise
    assert any({"AU12_r_mean", "AU12_c_share"} <= set(m) for m in clusters["members"].values())
    assert clusters["n_clusters"] == 18 and set(clusters["top"]) == set(TRAITS)
    measured = report["cue_check_measured"]["functionals_ridge"]  # cues measured, not named
    assert all(c["pass"] for c in measured.values()), measured
    found = clusters["measured_cues"]
    smile = next(n for n in found if n.startswith(("AU12_c_share", "AU12_r_mean")))
    assert found[smile][0] == "smile" and found[smile][1] > 0.8
    assert found["fn_logmel_00_mean"][0] == ""  # noise follows no cue
    grouped = report["cue_check_grouped"]["functionals_ridge"]
    assert all(c["pass"] and len(c["top"]) == 3 for c in grouped.values()), grouped
    assert all(c["chance_pass"] == pytest.approx(22 / 120) for c in grouped.values())
    # the top feature of each trait measures one of its planted cues
    assert all(cue in check[t]["planted"] for t in TRAITS
               for cue in [check[t]["top_cues"][0]])
    for name in ("explain.json", "explain.md", "explain/functionals_ridge.csv",
                 "explain/functionals_ridge.png", "explain/functionals_ridge_clusters.png"):
        assert (fake_repo / "metrics" / name).stat().st_size > 500
    assert entry["png_clusters"] == "metrics/explain/functionals_ridge_clusters.png"
    written = json.loads((fake_repo / "metrics" / "explain.json").read_text())
    top = written["models"]["functionals_ridge"]["permutation"]["top"]["E"][0]
    assert len(top) == 4 and top[2] <= top[1] <= top[3]  # value inside its interval
    csv = pd.read_csv(fake_repo / "metrics" / "explain" / "functionals_ridge.csv")
    assert len(csv) == 19 * 5 and {"r_prediction_lo", "importance_hi", "cue"} <= set(csv.columns)
    assert "Cue check" in (fake_repo / "metrics" / "explain.md").read_text()


def test_crossfit_scores_each_train_clip_by_a_refit_without_its_subject(fake_repo, monkeypatch):
    import models.classical as classical
    from stages.explain import ExplainParams, load_table, scored_clips

    fitted_on, refits, real = [], [], classical.refit

    def spy(model, x, y, groups, columns=None):
        fitted_on.append(set(groups))
        # standardised with this fold's own training clips, as the source does in training
        sd = x.std(0)  # 1, or 0 for a constant column (face_share)
        assert np.allclose(x.mean(0), 0, atol=1e-5) and np.all(np.isclose(sd, 1) | (sd == 0))
        refits.append(real(model, x, y, groups, columns))
        return refits[-1]

    monkeypatch.setattr(classical, "refit", spy)
    table, _ = load_table(fake_repo, ["train", "val"])
    key, names, parts = scored_clips(fake_repo, "functionals_ridge", table,
                                     ExplainParams(crossfit_folds=4))
    assert key == "functionals" and [p.split for p in parts] == ["val"] + ["train"] * 4
    train = table[table["split"] == "train"]
    assert sorted(v for p in parts[1:] for v in p.views) == sorted(train.index)  # each once
    for part, seen, model in zip(parts[1:], fitted_on, refits, strict=True):
        assert part.model is model  # the refit scores its fold, not the trained model
        assert not seen & set(part.subjects)
        assert seen | set(part.subjects) == set(train["subject_id"])
        assert np.array_equal(part.y, train.loc[list(part.views), list(TRAITS)].to_numpy())


def test_crossfit_keeps_the_validation_ranking_and_narrows_the_intervals(fake_repo):
    """Cross-fitting adds the train clips beside the validation ones: the ranking on the
    validation clips alone is the one a run without cross-fitting reports (to rounding: the
    arrays sum in another memory layout), and the intervals over 150 clips are narrower than
    over 30."""
    from stages.explain import ExplainParams, run

    params = dict(repeats=5, bootstrap=50, mlflow=False)
    alone = run(ExplainParams(crossfit_folds=0, **params), root=fake_repo,
                models=["functionals_ridge"])
    both = run(ExplainParams(**params), root=fake_repo, models=["functionals_ridge"])
    val = alone["models"]["functionals_ridge"]["permutation"]["clusters"]["top"]
    clusters = both["models"]["functionals_ridge"]["permutation"]["clusters"]
    for t in TRAITS:
        assert [r[0] for r in clusters["top_val"][t]] == [r[0] for r in val[t]]
        assert np.allclose([r[1:] for r in clusters["top_val"][t]], [r[1:] for r in val[t]],
                           rtol=0, atol=1e-12)
    assert both["cue_check_val"]["functionals_ridge"] == alone["cue_check"]["functionals_ridge"]
    assert alone["cue_check_val"] == {}

    def width(top):
        return np.mean([hi - lo for rows in top.values() for _, _, lo, hi in rows])

    assert width(clusters["top"]) < 0.8 * width(val)
    text = (fake_repo / "metrics" / "explain.md").read_text()
    assert "150 clips: val 30 (the trained model), train 120 (cross-fitted: 5 refits" in text
    assert "Cue check on the validation clips alone, functionals_ridge" in text


def test_power_bench_runs_the_stage_s_own_check(fake_repo):
    """bench/cue_check_power.py's importance, scoring val with the stage's checkpoint and given
    its clusters, is the stage's cluster importance to the last bit (same seeds): the
    standardisation, the cross-fitting refits, the shuffles and the clip order are the stage's,
    so the bench's rows measure the check the stage runs, not a look-alike."""
    from models.engine import load_checkpoint
    from stages.explain import ExplainParams, find_checkpoint, load_table, permutation

    bench = load_bench("cue_check_power")
    table, names = load_table(fake_repo, ["train", "val", "test"])
    perm = permutation(fake_repo, "functionals_ridge", table, ExplainParams(repeats=3), seed=11,
                       train=table[table["split"] == "train"])
    clips = table.reset_index()[["video_id", "subject_id", "split", *TRAITS]]
    net, _ = load_checkpoint(find_checkpoint("functionals_ridge", fake_repo))
    imp = bench.importance(table[names].to_numpy(np.float64), clips, repeats=3, seed=11,
                           names=names, groups=perm["clusters"]["groups"], config={}, model=net)
    assert np.array_equal(imp, perm["cluster_importance"]["value"])
    assert bench.passes(imp, perm["clusters"]["cues"]).all()  # the fake law is found
    # fitting its own ridge (subject-grouped CV over the ids' strings, where this fixture's
    # checkpoint grouped integers: other folds) moves the numbers only a little
    own = bench.importance(table[names].to_numpy(np.float64), clips, repeats=3, seed=11,
                           names=names, groups=perm["clusters"]["groups"], config={})
    assert np.allclose(own, imp, rtol=0, atol=1e-3) and not np.array_equal(own, imp)


def test_models_explained_in_parallel_match_one_process(fake_repo, tmp_path):
    """Two models explained in two worker processes give the report of one process, each
    model's entry under its own name (a second model that predicts differently)."""
    import shutil

    from personality.common import BaseParams
    from stages.explain import ExplainParams, run

    root = tmp_path / "repo"
    shutil.copytree(fake_repo, root)
    shutil.copytree(root / "data/models/functionals_ridge", root / "data/models/functionals_gbt")
    pred = pd.read_parquet(root / "data/predictions/functionals_ridge.parquet")
    noise = np.random.default_rng(1).normal(0, 0.05, (len(pred), len(TRAITS)))
    pred[list(TRAITS)] = pred[list(TRAITS)].to_numpy() + noise
    pred.assign(model="functionals_gbt").to_parquet(
        root / "data/predictions/functionals_gbt.parquet")
    params = ExplainParams(repeats=2, bootstrap=20, mlflow=False)
    models = ["functionals_ridge", "functionals_gbt"]
    serial = run(params, BaseParams(workers=1), root=root, models=models)
    parallel = run(params, BaseParams(workers=2), root=root, models=models)
    assert json.dumps(parallel, sort_keys=True) == json.dumps(serial, sort_keys=True)
    assert list(parallel["models"]) == models  # explained gbt first, reported in given order
    # each entry is its own model's: the entry of that model explained alone
    alone = run(params, BaseParams(workers=1), root=root, models=["functionals_gbt"])
    entry = json.dumps(alone["models"]["functionals_gbt"], sort_keys=True)
    assert json.dumps(parallel["models"]["functionals_gbt"], sort_keys=True) == entry
    assert json.dumps(parallel["models"]["functionals_ridge"], sort_keys=True) != entry


# --------------------------------------------------------------------------------------------------
# predict: prediction.json's `explanation` and the report


@pytest.fixture(scope="module")
def face_checkpoint(tmp_path_factory):
    from models.engine import save_checkpoint

    torch.manual_seed(0)
    model = build_model("hrnet_face", width=8)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "hrnet_face" / "best.pt",
                           model=model, model_name="hrnet_face",
                           model_config={"width": 8}, train_mean=[0.5] * 5, inputs=["face"],
                           source_config={"face": {"size": 64, "max_eval_views": 4}})


def test_predict_writes_and_draws_the_explanation(face_checkpoint, tmp_path):
    from stages import predict
    from tests.conftest import real_fixture

    video = real_fixture("single_face.mp4")
    assert predict.main([str(video), "--out", str(tmp_path / "a"), "--model",
                         str(face_checkpoint)]) == 0
    result = json.loads((tmp_path / "a" / "prediction.json").read_text())
    cam = result["explanation"]["gradcam"]["face"]
    assert result["explanation"]["kinds"] == ["gradcam"]
    assert np.asarray(cam["maps"]).shape[0] == 5 and cam["views"] == 4
    assert predict.main([str(video), "--out", str(tmp_path / "b"), "--model",
                         str(face_checkpoint), "--no-explain"]) == 0
    plain = json.loads((tmp_path / "b" / "prediction.json").read_text())
    assert "explanation" not in plain and all(plain[t] == result[t] for t in TRAITS)
    from PIL import Image

    tall, short = (Image.open(tmp_path / d / "report.png").size[1] for d in ("a", "b"))
    assert tall > short  # the Grad-CAM row is drawn


def test_an_explainer_that_raises_leaves_the_prediction_whole(monkeypatch):
    """predict's explanation is an add-on: any exception in it (a TypeError in Grad-CAM once
    failed every prediction of an interpret_dan_face checkpoint) becomes a one-line error."""
    from models import explain
    from stages import predict

    def broken(*_args, **_kwargs):
        raise TypeError("new(): invalid data type 'str'")

    monkeypatch.setattr(explain, "explain_clip", broken)
    part, images = predict._explanation(None, [], "clip", lambda _section, cls: cls())
    assert part == {"kinds": [], "error": "TypeError: new(): invalid data type 'str'"}
    assert images == {}


def test_explain_clip_on_built_sources(tmp_path, speech_then_silence):
    """explain_clip picks the kinds from the sources' keys; an audio-visual model gets two."""
    _, logmel = speech_then_silence
    torch.manual_seed(0)
    model = build_model("bimodal_resnet", width=8, layers=[1, 1, 1, 1],
                        audio_widths=[8, 16, 32, 64]).eval()

    class Faces:  # a face source stand-in: 3 crops
        keys = ("face",)

        def eval_items(self, vid):
            return {"face": torch.zeros(3, 3, 64, 64).normal_(generator=torch.Generator()
                                                              .manual_seed(1))}

        def has(self, vid):
            return True

    sources = [Faces(), _logmel_source(logmel)]
    explanation, images = explain_clip(model, sources, "clip")
    assert explanation["kinds"] == ["gradcam", "audio_occlusion"]
    assert images["face"].shape == (64, 64, 3) and images["face"].dtype == np.uint8
    assert len(explanation["audio_occlusion"]["logmel"]["delta"][0]) == 6
    assert clip_views(sources, "clip")["face"].shape == (3, 3, 64, 64)
    json.dumps(explanation)  # JSON-safe


def test_explain_clip_sees_a_short_input_padded_as_it_was_scored(speech_then_silence):
    """0.11 s of log-mel (11 frames, eval_mode full) under the audio CNN's 16: the score pads it
    (models/inference.py pad_short), the explanations did not, so Grad-CAM raised torch's
    "Output size is too small" and predict lost every explanation of the clip (a review found
    it). Now every kind runs on the inputs as scored."""
    _, logmel = speech_then_silence
    torch.manual_seed(0)
    model = build_model("bimodal_resnet", width=8, layers=[1, 1, 1, 1],
                        audio_widths=[8, 16, 32, 64]).eval()

    class Faces:
        keys = ("face",)

        def eval_items(self, vid):
            return {"face": torch.zeros(1, 3, 64, 64)}

        def has(self, vid):
            return True

    explanation, _ = explain_clip(model, [Faces(), _logmel_source(logmel[:, :11])], "clip")
    assert explanation["kinds"] == ["gradcam", "audio_occlusion"]
    assert np.isfinite(explanation["gradcam"]["face"]["maps"]).all()


def test_latent_cues_only_where_ingest_wrote_them(fake_repo, tmp_path):
    from personality.common import read_artifact, write_artifact
    from personality.cue_check import latent_cues

    path = "data/synthetic_cues.parquet"
    cues = latent_cues(fake_repo / path)
    assert cues is not None and cues.shape == (180, 10) and cues.index[0] == "v000"
    assert latent_cues(tmp_path / path) is None  # no file
    write_artifact("synthetic_cues", pd.DataFrame({"video_id": [], "subject_id": []}),
                   path=tmp_path / path)
    assert latent_cues(tmp_path / path) is None  # a real dataset: ingest writes an empty table
    # the face photo each clip shows: one 0/1 column per photo but the first, beside the cues
    table = read_artifact("synthetic_cues", path=fake_repo / path)
    table["face_photo"] = np.where(np.arange(180) % 2, "hopper", "astronaut")
    write_artifact("synthetic_cues", table, path=tmp_path / path)
    cues = latent_cues(tmp_path / path)
    assert list(cues.columns[10:]) == ["photo:hopper"]
    assert cues["photo:hopper"].tolist() == [float(i % 2) for i in range(180)]


def test_measured_check_reads_cues_within_face_photo_and_names_pure_photo_proxies(rng):
    """The measured check names a cluster by the cue its medoid follows within face photo (each
    photo's mean rank removed): a statistic whose level differs between the two faces still
    measures its cue. One that follows only which face the clip shows (an identity proxy, like
    the default data's lower-face AU levels) is named photo:<name> and is no hit, however
    important; one that follows neither is unnamed."""
    from personality.cue_check import measured_check
    from personality.synthetic import CUES, LABEL_WEIGHTS

    n = 80
    latent = pd.DataFrame(rng.standard_normal((n, 10)), columns=list(CUES),
                          index=[f"v{i}" for i in range(n)])
    photo = (np.arange(n) % 2).astype(float)
    latent["photo:hopper"] = photo
    brow = latent["brow_lower"].to_numpy()
    train = pd.DataFrame({"face_level": photo * 2 + rng.normal(0, 0.2, n),
                          "brow_on_face": brow + 6 * photo,  # the cue, offset by the face
                          "smile_stat": latent["smile"] + rng.normal(0, 0.1, n),
                          "noise": rng.standard_normal(n)}, index=latent.index)
    assert abs(pd.Series(brow).corr(train["brow_on_face"].reset_index(drop=True),
                                    method="spearman")) < 0.7  # pooled, the face hides it
    names = ["face_level (+3)", "brow_on_face", "smile_stat", "noise"]
    value = np.zeros((4, 5))
    value[:, TRAITS.index("A")] = [0.4, 0.3, 0.2, 0.1]
    perm = {"clusters": {"names": names, "medoids": ["face_level", "brow_on_face",
                                                      "smile_stat", "noise"]},
            "cluster_importance": {"value": value, "samples": value[None]}}
    check, cues = measured_check(perm, train, latent, (LABEL_WEIGHTS, list(CUES)), 5, 0.7)
    assert [cues[k][0] for k in names] == ["photo:hopper", "brow_lower", "smile", ""]
    assert cues["brow_on_face"][1] > 0.9 and cues["brow_on_face"][2] > 0.8  # cue and photo
    assert cues["face_level (+3)"][2] > 0.8 and cues["noise"][2] < 0.7
    assert check["A"]["top_cues"][:3] == ["photo:hopper", "brow_lower", "smile"]
    assert check["A"]["hits"] == 2  # brow_lower and smile; the photo is no planted cue
    # without a recorded photo: plain Spearman, the photo-offset brow measures nothing
    _, plain = measured_check(perm, train, latent[list(CUES)], (LABEL_WEIGHTS, list(CUES)), 5,
                              0.7)
    assert plain["brow_on_face"][0] == "" and plain["brow_on_face"][2] is None


def test_no_validation_clips_leave_correlations_and_no_importance(fake_repo, tmp_path):
    """A dataset without a val split: the model is still correlated with its functionals, and
    its permutation entry says there is none instead of the stage failing."""
    import shutil

    from personality.common import write_artifact
    from stages.explain import ExplainParams, run

    root = tmp_path / "repo"
    shutil.copytree(fake_repo, root)
    manifest = pd.read_parquet(root / "data" / "manifest.parquet")
    manifest["split"] = manifest["split"].replace("val", "test")
    write_artifact("manifest", manifest, path=root / "data" / "manifest.parquet")
    report = run(ExplainParams(repeats=2, bootstrap=20, mlflow=False), root=root,
                 models=["functionals_ridge"])
    entry = report["models"]["functionals_ridge"]
    assert entry["permutation"] is None and entry["n_clips"] == 60
    assert report["cue_check"] == {}


def test_r_with_the_label_rests_on_the_clips_r_with_the_prediction_does(fake_repo, tmp_path):
    """The label's r was over every labelled val/test clip, the prediction's over those the
    model predicted: a clip without a prediction was in one column of the CSV and heat map and
    not in the other. Both are now over the same clips and subject resamples, counted in
    explain.json and explain.md."""
    import shutil

    from models.importance import bootstrap_weights, correlations
    from personality.common import BaseParams
    from stages.explain import ExplainParams, run

    root = tmp_path / "repo"
    shutil.copytree(fake_repo, root)
    path = root / "data" / "predictions" / "functionals_ridge.parquet"
    pred = pd.read_parquet(path)
    manifest = pd.read_parquet(root / "data" / "manifest.parquet").set_index("video_id")
    clips = manifest[manifest["split"].isin(["val", "test"])]
    gone = clips["A"].idxmax()  # the most agreeable clip: its r moves most
    pred[pred["video_id"] != gone].to_parquet(path)
    params = ExplainParams(repeats=2, bootstrap=20, mlflow=False, crossfit_folds=0,
                           cluster_distance=0)
    report = run(params, root=root, models=["functionals_ridge"])
    kept = clips.drop(index=gone)
    fn = pd.read_parquet(root / "data" / "functionals" / "functionals.parquet").set_index(
        "video_id")
    x = fn.loc[kept.index, ["AU12_c_share"]].to_numpy(np.float64)  # (59, 1)
    w = bootstrap_weights(kept["subject_id"].tolist(), n_boot=20, seed=BaseParams().seed)
    want = correlations(x, kept[list(TRAITS)].to_numpy(np.float64), w)
    csv = pd.read_csv(root / "metrics" / "explain" / "functionals_ridge.csv")
    row = csv[csv["feature"] == "AU12_c_share"].set_index("trait")
    for s, col in (("value", "r_label"), ("lo", "r_label_lo"), ("hi", "r_label_hi")):
        assert row[col].to_numpy() == pytest.approx(want[s][0], rel=1e-3, abs=1e-4), col
    everyone = np.corrcoef(fn.loc[clips.index, "AU12_c_share"], clips["A"])[0, 1]
    assert abs(everyone - row.loc["A", "r_label"]) > 1e-3  # the 60-clip r it was before
    entry = report["models"]["functionals_ridge"]
    assert (entry["n_clips"], entry["n_without_prediction"]) == (59, 1)
    assert entry["n_subjects"] == kept["subject_id"].nunique() == 20
    assert report["labels"]["n_clips"] == 60  # every labelled clip, whatever a model predicts
    label_top = entry["top_r_label"]["A"][0]
    assert label_top[1] == pytest.approx(csv[(csv["feature"] == label_top[0])
                                             & (csv["trait"] == "A")]["r_label"].iloc[0], rel=1e-3)
    md = (root / "metrics" / "explain.md").read_text()
    assert "val/test clips the model has a prediction for, of the 60 labelled" in md
    assert "| functionals_ridge | 59 |" in md


def test_too_few_labelled_clips_skip_the_stage_instead_of_failing_the_pipeline(tmp_path,
                                                                               monkeypatch):
    """A small corpus (the pipeline tests' fixtures) has no val/test clips to explain on: the
    stage writes why, and `dvc repro` goes on."""
    from stages import explain

    def too_few(root, splits):
        raise explain.TooFewClips("2 labelled clips of ['test', 'val'] with functionals")

    monkeypatch.setattr(explain, "load_table", too_few)
    out = explain.run(explain.ExplainParams(), root=tmp_path, models=["perfex_cnn"])
    assert out == {"skipped": "2 labelled clips of ['test', 'val'] with functionals"}
    assert json.loads((tmp_path / "metrics" / "explain.json").read_text()) == out
    assert (tmp_path / "metrics" / "explain").is_dir()


def _heatmap_rows(monkeypatch, tmp_path, features, perm, k=2):
    """Rows and panels write_model_files hands to heatmap_png (captured), and its CSV."""
    from types import SimpleNamespace

    from personality import explain_plots
    from personality.explain_report import write_model_files

    drawn = {}

    def capture(panels, rows, *, path, **_):
        drawn.update(panels=panels, rows=rows)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"png")
        return Path(path)

    monkeypatch.setattr(explain_plots, "heatmap_png", capture)
    n = len(features)
    corr = {s: np.linspace(-0.5, 0.5, n * 5).reshape(n, 5) for s in ("value", "lo", "hi")}
    p = SimpleNamespace(top_k=k, dpi=50, correlation_splits=["val", "test"],
                        permutation_split="val")
    write_model_files(tmp_path, Path("explain"), "m", features, corr, corr, perm, p)
    return drawn, pd.read_csv(tmp_path / "explain" / "m.csv")


def test_heat_map_rows_are_the_json_s_top_importances_not_the_largest_negative_ones(
        monkeypatch, tmp_path):
    """explain.json ranks importance by value; the heat map took each trait's k largest
    |importance|, so a feature whose shuffling made the predictions *better* (the default data's
    functionals_gbt: three of E's five) pushed the json's top features (AU12_c_share) out."""
    from stages.explain import _top

    features = ["a", "b", "c", "d"]
    value = np.tile(np.array([[0.05], [0.02], [-0.09], [0.0]]), (1, 5))
    imp = {"value": value, "lo": value - 0.01, "hi": value + 0.01}
    drawn, _ = _heatmap_rows(monkeypatch, tmp_path, features,
                             {"features": features, "importance": imp, "n_crossfit": 0})
    json_top = {f for rows in _top(imp, features, 2).values() for f, *_ in rows}
    assert json_top == {"a", "b"} and drawn["rows"] == ["a", "b"]


def test_an_au_model_s_channel_importance_reaches_its_csv_and_heat_map(monkeypatch, tmp_path):
    """An AU-sequence model's importance is per AU channel (AU12_r), no functionals column: the
    CSV's importance column and the heat map's importance panel were empty (the default
    perfex_cnn and perfex_hybrid), though explain.json listed them."""
    features = ["AU12_r_mean", "AU04_r_sd", "fn_rms_db_mean"]
    channels = ["AU04_r", "AU12_r"]
    value = np.array([[0.01] * 5, [0.08] * 5])
    imp = {"value": value, "lo": value - 0.01, "hi": value + 0.01}
    drawn, csv = _heatmap_rows(monkeypatch, tmp_path, features,
                               {"features": channels, "importance": imp, "n_crossfit": 0})
    au12 = csv[csv["feature"] == "AU12_r"]
    assert len(au12) == 5 and np.allclose(au12["importance"], 0.08)
    assert au12["cue"].eq("smile").all() and au12["r_prediction"].isna().all()
    assert csv["importance"].notna().sum() == 10  # the channels' rows, no functionals'
    assert drawn["rows"][:2] == ["AU12_r", "AU04_r"]  # importance first, then r's top rows
    assert set(drawn["rows"][2:]) <= set(features) and len(drawn["rows"]) > 2
    panel = drawn["panels"]["permutation importance (CCC drop)"]
    assert np.allclose(panel[:2, 0], [0.08, 0.01])


def test_a_class_activation_map_below_zero_is_drawn_not_called_flat():
    """interpret_dan_face's own CAM is in logits: a trait scored under 0.5 has a map below 0
    everywhere, which the report drew as an empty overlay titled '(flat)' though it peaks
    somewhere like any other."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from personality.explain_plots import draw_gradcam

    maps = np.zeros((5, 4, 4))
    maps[0] = -1.0
    maps[0, 1, 2] = -0.2  # the least negative cell: where the logit is highest
    maps[1, 3, 3] = 0.5  # a Grad-CAM map (>= 0)
    fig = plt.figure()
    try:
        draw_gradcam(fig, fig.add_gridspec(1, 1)[0, 0], maps, None, list(TRAITS))
        titles = [ax.get_title() for ax in fig.axes]
        shown = [np.asarray(ax.get_images()[-1].get_array()) for ax in fig.axes]
    finally:
        plt.close(fig)
    assert titles == ["O", "C", "E (flat)", "A (flat)", "N (flat)"]
    assert shown[0].max() == pytest.approx(1.0) and shown[0].min() == pytest.approx(0.0)
    assert np.unravel_index(shown[0].argmax(), shown[0].shape)[0] in range(16, 32)  # row 1 of 4
    assert shown[1].max() == pytest.approx(1.0) and shown[2].max() == 0.0


def test_explain_md_says_the_top_k_and_interval_level_the_params_set(fake_repo, tmp_path):
    """explain.md's tables were headed 'top 5 features ... [95% CI]' and '95% intervals' whatever
    explain.top_k and explain.ci_level were: with top_k 3 and ci_level 0.9 they listed three
    features with 90% intervals under that header."""
    import shutil

    from stages.explain import ExplainParams, run

    root = tmp_path / "repo"
    shutil.copytree(fake_repo, root)
    run(ExplainParams(repeats=2, bootstrap=20, mlflow=False, top_k=3, ci_level=0.9,
                      crossfit_folds=0), root=root, models=["functionals_ridge"])
    text = (root / "metrics" / "explain.md").read_text()
    assert "top 3 features (cue): CCC drop [90% CI]" in text and "90% intervals over" in text
    assert "95%" not in text and "top 5" not in text


def test_a_raw_ridge_score_past_the_scale_is_named(rng):
    """functionals_ridge clamps its scores to [0, 1]: a raw A of 1.34 was shown as 1.00 with no
    warning (found by a walkthrough on a real clip). predict now names each clipped trait with
    its raw score; a model that clamps nothing, or a score inside the scale, says nothing."""
    from stages.predict_caveats import clipped_warnings

    class Source:  # one video, one view of 6 standardised functionals
        keys = ("functionals",)

        def eval_items(self, video_id):  # (V=1, F=6)
            return {"functionals": torch.ones(1, 6, dtype=torch.float32)}

    model = build_model("functionals_ridge", n_features=6).eval()
    model.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 1.34, -0.72], dtype=torch.float64))
    warned = clipped_warnings(model, [Source()], "v")
    assert len(warned) == 1 and "A 1.34, N -0.72" in warned[0] and "O " not in warned[0]
    model.bias.copy_(torch.full((5,), 0.5, dtype=torch.float64))
    assert clipped_warnings(model, [Source()], "v") == []
    assert clipped_warnings(build_model("perfex_cnn"), [Source()], "v") == []


def test_the_heat_map_keeps_a_long_feature_name_inside_the_page(tmp_path, monkeypatch):
    """metrics/explain/<model>.png cut the first characters off its longest feature names
    ("gemaps_F0semitoneFrom27.5Hz...") at the left edge: laid out at the figure's 100 dpi and
    written at 90, where text is not exactly nine tenths as wide. Every label is measured here at
    the resolution the PNG is written at."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from personality import explain_plots

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    names = ["egemaps_F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", "AU12_r_p90"] * 9
    panels = {k: np.random.default_rng(0).normal(size=(18, 5)) for k in ("r", "label", "drop")}
    explain_plots.heatmap_png(panels, names, path=tmp_path / "m.png", dpi=90, title="m",
                              row_notes=["pitch_var", "smile"] * 9)
    fig = figures[0]
    fig.set_dpi(90)  # as savefig drew it
    renderer = FigureCanvasAgg(fig).get_renderer()
    labels = [t for ax in fig.axes for t in ax.get_yticklabels() if t.get_text()]
    assert len(labels) == 18
    assert min(t.get_window_extent(renderer).x0 for t in labels) >= 0
    # a two-panel map's long title (the clusters' map) ran off both edges: it wraps
    explain_plots.heatmap_png({k: panels[k] for k in ("r", "drop")}, names,
                              path=tmp_path / "c.png", dpi=90, title="m: " + "long title " * 20)
    fig = figures[1]
    extent = fig._suptitle.get_window_extent(FigureCanvasAgg(fig).get_renderer())
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.x1


def test_the_cluster_heat_map_shows_each_trait_s_top_clusters(tmp_path, monkeypatch):
    """The per-feature heat map's importance column shuffles one column at a time, which a cue
    read by many proxies survives: functionals_gbt's showed 0.00 for most rows. The clusters'
    map shows what the cue check ranks: each trait's top_k clusters (union, trait by trait,
    largest drop first, no zero or negative-only filler), the drop and its interval's lower end,
    each cluster's cue beside its name; no map for a model without clusters."""
    from personality import explain_plots
    from personality.explain_report import write_cluster_png
    from stages.explain import ExplainParams

    drawn = []
    monkeypatch.setattr(explain_plots, "heatmap_png",
                        lambda panels, rows, *, path, row_notes, **kw:
                        drawn.append((panels, rows, row_notes)) or Path(path))
    value = np.zeros((4, 5))
    value[2, 0], value[0, 0], value[3, 3] = 0.3, 0.1, 0.2  # O: c, a; A: d; b never
    perm = {"cluster_importance": {"value": value, "lo": value - 0.05, "hi": value + 0.05},
            "clusters": {"names": ["a (+2)", "b", "c (+1)", "d"],
                         "cues": ["smile", "", "pitch_var", ""]}, "n_crossfit": 5}
    p = ExplainParams(top_k=2)
    out = write_cluster_png(tmp_path, Path("metrics/explain"), "m", perm, p)
    assert out == "metrics/explain/m_clusters.png"
    panels, rows, notes = drawn[0]
    assert rows == ["c (+1)", "a (+2)", "d"] and notes == ["pitch_var", "smile", ""]
    assert np.allclose(panels["CCC drop when shuffled"][:, 0], [0.3, 0.1, 0.0])
    assert np.allclose(panels["lower end of its 95% interval"][2], value[3] - 0.05)
    assert write_cluster_png(tmp_path, Path("x"), "m", {"n_crossfit": 0}, p) is None
    assert write_cluster_png(tmp_path, Path("x"), "m", None, p) is None
