"""Which method explains which model in predict (models/explain.py, models/contributions.py).

    python -m pytest tests/test_explain_methods.py -q      # ~1 min on one core

Grad-CAM of a two-pathway video model (slow_fast_face_seq) reads the last map of each pathway and
adds them, not the last map of all (a Fast-to-Slow lateral conv at 64 px, the Fast stage alone at
112 px): the layers and the map's shape per crop size, and, on a tiny SlowFast trained here on
clips whose target lives in one region of every frame, a map that peaks there and leaves when that
region is blanked. Feature contributions: integrated gradients stay for perfex_cnn (complete);
spectrum_model, whose Fourier phase the straight path from 0 never moves, gets occlusion, complete
(each AU row is its own until the linear head), named in prediction.json and the report's panel,
and its numbers follow the AU that moves, in amplitude or only in phase (a shift in time); a model
that does not say so but whose integrated gradients leave a tenth of the change out, even with 4x
the steps, gets it too, unless occlusion leaves out more.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.contributions import feature_contributions, integrated_gradients
from models.explain import _joint_cam, cam_layer, gradcam, predict_views
from models.registry import build_model
from personality.explain_plots import UNACCOUNTED_SHARE, unaccounted_share
from personality.schemas import AU_INTENSITY, TRAITS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------------
# Grad-CAM of SlowFast


@pytest.mark.parametrize("size, layers", [(64, "slow.2 + fast.2"), (128, "slow.3 + fast.3")])
def test_slow_fast_gradcam_reads_both_pathways(size, layers, rng):
    """64 px (params.yaml's crops): the /16 stage of each pathway, 4 x 4 (the /32 one is 2 x 2,
    under cam_min_side, as resnet18_face's trunk.stages.2); 128 px: the last stage of each. Before,
    lateral.3 (a conv of the Fast features into Slow) and fast.3 (the Fast pathway alone)."""
    torch.manual_seed(0)
    model = build_model("slow_fast_face_seq", width=8, beta_inv=4, alpha=2).eval()
    views = {"face_seq": torch.from_numpy(
        rng.standard_normal((2, 6, 3, size, size)).astype(np.float32))}
    maps, used = gradcam(model, views, "face_seq")
    assert used == layers == cam_layer(model, views, "face_seq")
    assert maps.shape == (5, 4, 4) and np.all(maps >= 0) and np.isfinite(maps).all()
    assert maps.max() > 0


def test_hrnet_gradcam_reads_every_branch_on_the_finest_grid(rng):
    """The head pools all three branches; the last map of all was the coarsest branch's (4 x 4
    at 64 px), which left 60% of O's signal out on the trained hrnet_face and drew an A map
    unrelated (r -0.08) to the whole model's (a review found it). Now each branch's last block,
    the coarser terms spread over the 16 x 16 grid of the finest with their totals kept."""
    torch.manual_seed(0)
    model = build_model("hrnet_face", width=8).eval()
    views = {"face": torch.from_numpy(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))}
    maps, used = gradcam(model, views, "face")
    assert used == "stages.2.0 + stages.2.1 + stages.2.2" == cam_layer(model, views, "face")
    assert maps.shape == (5, 16, 16) and np.all(maps >= 0) and np.isfinite(maps).all()
    # a 2 x 2 term (its shares 0, 1, 2, 3) beside a 4 x 4 one of zeros: each coarse cell's share
    # split over the 4 fine cells it covers, the total (6) kept
    coarse = torch.arange(4.0).view(1, 1, 2, 2)
    joint = _joint_cam([coarse, torch.zeros(1, 1, 4, 4)],
                       [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 4, 4)])  # its term: itself
    assert joint.shape == (1, 4, 4) and float(joint.sum()) == pytest.approx(6.0)
    assert joint[0, 2:, 2:].tolist() == [[0.75, 0.75], [0.75, 0.75]]


MOUTH = (slice(20, 28), slice(8, 24))  # rows, columns of a 32 x 32 frame: cells 2-3, 1-2 of 4 x 4


def _clips(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Noise clips (n, 6, 3, 32, 32) with horizontal stripes of amplitude a (n,) in the mouth
    region of every frame; extraversion (E) = a, the other traits constant."""
    x = rng.normal(0, 0.3, (n, 6, 3, 32, 32)).astype(np.float32)
    a = rng.uniform(0, 1, n).astype(np.float32)
    stripes = np.where(np.arange(32) % 2 == 0, 1.0, -1.0)[MOUTH[0], None].astype(np.float32)
    x[..., MOUTH[0], MOUTH[1]] += a[:, None, None, None, None] * stripes
    return torch.from_numpy(x), a


def test_slow_fast_gradcam_peaks_where_the_trait_lives_and_leaves_when_it_is_blanked(rng):
    """Two stages (32 px: 8 x 8, then 4 x 4), so the maps read are the last blocks of both
    pathways; before, fast.1 alone."""
    torch.manual_seed(0)
    model = build_model("slow_fast_face_seq", width=8, beta_inv=4, alpha=2, layers=[1, 1])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(120):
        x, a = _clips(16, rng)
        y = torch.full((16, 5), 0.5)
        y[:, 2] = torch.from_numpy(0.2 + 0.6 * a)
        loss = ((model.decode(model({"face_seq": x})) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, _ = _clips(8, rng)
    x[..., MOUTH[0], MOUTH[1]] += 0.5 * torch.from_numpy(
        np.where(np.arange(32) % 2 == 0, 1.0, -1.0)[MOUTH[0], None].astype(np.float32))
    maps, layer = gradcam(model, {"face_seq": x}, "face_seq")
    e = maps[TRAITS.index("E")]  # (4, 4)
    inside = np.zeros_like(e, bool)
    inside[2:4, 1:3] = True  # the cells the mouth covers
    assert layer == "slow.1 + fast.1" and e.shape == (4, 4)
    assert inside.flat[e.argmax()], f"the map of E must peak on the mouth:\n{e.round(5)}"
    assert e[inside].mean() > 3 * e[~inside].mean()
    blank = x.clone()
    blank[..., MOUTH[0], MOUTH[1]] = 0  # occlude the mouth in every frame
    moved, _ = gradcam(model, {"face_seq": blank}, "face_seq")
    assert moved[2][inside].mean() < 0.5 * e[inside].mean()


# --------------------------------------------------------------------------------------------------
# feature contributions: integrated gradients, or occlusion in their place


def _au_clip(rng: np.random.Generator, n: int = 80) -> dict[str, torch.Tensor]:
    """One AU clip as predict's views: aus (1, n, 17) with slow waves of random phase, mask."""
    t = np.arange(n)[:, None]
    phase = rng.uniform(0, 2 * np.pi, 17)
    aus = 1 + 0.8 * np.sin(2 * np.pi * 3 * t / n + phase) + rng.normal(0, 0.1, (n, 17))
    return {"aus": torch.from_numpy(aus[None].astype(np.float32)),
            "aus_mask": torch.ones(1, n, dtype=torch.bool)}


def _spectrum_model(**config) -> torch.nn.Module:
    """A seeded spectrum_model whose head is 10x as steep as at initialisation, so that its scores
    move with the AUs by hundredths, as a trained one's do, not by millionths."""
    torch.manual_seed(0)
    model = build_model("spectrum_model", **config).eval()
    with torch.no_grad():
        model.head.mlp[-1].weight.mul_(10)
    return model


def _contributions(model, views) -> dict:
    return feature_contributions(model, views, "aus", list(AU_INTENSITY))


def test_spectrum_model_gets_complete_occlusion_and_says_so(rng):
    """Its integrated gradients left out over half the score change (the phase plane is the same
    all along the path from 0); occlusion of one AU's series is exact in logits (each AU row is
    its own until the linear head) and, through the sigmoid, close to complete."""
    model = _spectrum_model()
    views = _au_clip(rng)
    attr, zero = integrated_gradients(model, views, "aus")
    score = predict_views(model, {"clip": views})[0]
    ig_gap = score - zero - attr.sum(axis=(0, 1))  # (5,)
    assert np.abs(ig_gap).max() > 0.5 * np.abs(score - zero).max()  # why IG is not shown
    part = _contributions(model, views)
    values = np.asarray(part["values"])  # (17, 5)
    assert part["method"] == "occlusion" and part["instead_of"] == "integrated_gradients"
    assert "phase" in part["why"] and values.shape == (17, 5)
    # what the sigmoid's curvature leaves out: under the share the report would name
    assert np.all(unaccounted_share(values, part["completeness_gap"]) < UNACCOUNTED_SHARE)


@pytest.mark.parametrize("move", ["scale", "shift"])
def test_spectrum_model_occlusion_follows_the_au_that_moves(move, rng):
    """AU12 doubled, or shifted a quarter of the clip in time (its amplitude spectrum unchanged:
    only its phase moves, the part integrated gradients never saw): its own numbers move. With
    the unbounded head (regression_z) the model is a sum over AUs, so no other AU's may move;
    through the default head's sigmoid they move a little, less than AU12's."""
    k = AU_INTENSITY.index("AU12_r")
    clip = _au_clip(rng)
    moved = {**clip, "aus": clip["aus"].clone()}
    series = moved["aus"][0, :, k]
    moved["aus"][0, :, k] = 2 * series if move == "scale" else torch.roll(series, 20)
    for head in ("regression_z", "regression"):
        model = _spectrum_model(head=head)
        before, after = (np.asarray(_contributions(model, v)["values"]) for v in (clip, moved))
        change = np.abs(after - before)  # (17, 5)
        others = np.delete(change, k, axis=0).max()
        assert change[k].max() > 1e-4, head  # score units: ~ a quarter of the logits
        assert others < (1e-6 if head == "regression_z" else 0.1 * change[k].max()), head


def test_perfex_cnn_keeps_its_integrated_gradients(rng):
    """Complete on an AU CNN: the same numbers as before, no note of a stand-in."""
    torch.manual_seed(0)
    model = build_model("perfex_cnn").eval()
    views = _au_clip(rng)
    part = _contributions(model, views)
    attr, zero = integrated_gradients(model, views, "aus")
    assert part["method"] == "integrated_gradients" and "why" not in part
    assert np.array_equal(np.asarray(part["values"]), attr.sum(axis=0))  # (17, 5): over time
    assert np.array_equal(part["baseline_score"], zero)


def test_incomplete_integrated_gradients_give_way_to_occlusion(rng):
    """A model that does not declare them unsuitable: their gap, measured (with 4x the steps
    too), decides; occlusion leaves less out, so it is shown."""
    model = _spectrum_model()
    model.ig_unsuitable = ""  # as if undeclared
    part = _contributions(model, _au_clip(rng))
    assert part["method"] == "occlusion" and part["why"].startswith("with 128 steps they left ")
    assert "score change out" in part["why"] and len(part["ig_completeness_gap"]) == 5


class Steep(nn.Module):
    """Every trait a sigmoid of the clip's mean AU, steep at 0.37: on the path from 0 to an
    all-ones clip the score jumps in a stretch narrower than 32 midpoint steps resolve; setting
    one AU of 17 to 0 leaves the mean at 16/17, past the jump, so occlusion sees nothing."""

    inputs = ("aus", "aus_mask")

    def __init__(self, steepness: float):
        super().__init__()
        self.steepness = steepness

    def forward(self, batch):
        z = batch["aus"].mean(dim=(1, 2))  # (B,)
        return torch.sigmoid(self.steepness * (z[:, None] - 0.37)).expand(-1, 5)  # (B, 5)

    def decode(self, out):
        return out


def test_a_curved_path_gets_more_steps_and_occlusion_never_a_worse_stand_in():
    """perfex_hybrid on a trait its clip hardly moves: 32 steps left 16%, 128 none (the default
    checkpoint of a full run). A path 128 steps still cut short keeps integrated gradients when
    occlusion would leave out more (features that act only together), and the gap is kept."""
    views = {"aus": torch.ones(1, 40, 17), "aus_mask": torch.ones(1, 40, dtype=torch.bool)}
    names = list(AU_INTENSITY)
    part = feature_contributions(Steep(200.0), views, "aus", names)  # 32 steps: 30% left out
    assert part["method"] == "integrated_gradients" and part["ig_steps"] == 128
    assert np.all(unaccounted_share(part["values"], part["completeness_gap"]) < 0.01)
    part = feature_contributions(Steep(5000.0), views, "aus", names)
    assert part["method"] == "integrated_gradients" and part["ig_steps"] == 128
    assert unaccounted_share(part["values"], part["completeness_gap"]).max() > UNACCOUNTED_SHARE


def test_predict_names_the_method_in_prediction_json_and_the_report(tmp_path, monkeypatch):
    """A spectrum_model checkpoint through predict: prediction.json's contributions say
    occlusion, in place of what and why; the report's panel title says the same."""
    import json

    from models.engine import save_checkpoint
    from personality import explain_plots
    from stages import predict
    from tests.conftest import real_fixture

    checkpoint = save_checkpoint(tmp_path / "spectrum_model" / "best.pt", model=_spectrum_model(),
                                 model_name="spectrum_model", train_mean=[0.5] * 5,
                                 inputs=["aus", "aus_mask"])
    titles = []
    draw = explain_plots.draw_contributions
    monkeypatch.setattr(explain_plots, "draw_contributions", lambda *a, **kw: (
        titles.append(kw["title"]), draw(*a, **kw)))
    assert predict.main([str(real_fixture("single_face.mp4")), "--out", str(tmp_path / "out"),
                         "--model", str(checkpoint)]) == 0
    result = json.loads((tmp_path / "out" / "prediction.json").read_text())
    part = result["explanation"]["contributions"]["aus"]
    assert part["method"] == "occlusion" and part["instead_of"] == "integrated_gradients"
    assert "phase" in part["why"] and len(part["completeness_gap"]) == 5
    assert titles == ["feature contributions (aus, occlusion: score minus score with that feature "
                      "at 0)\nin place of integrated gradients: " + part["why"]]


def test_a_gap_note_that_would_run_off_the_panel_gets_its_own_line():
    """functionals_gbt's occlusion (trees: features act together) often leaves out more than a
    tenth; after the two-line occlusion title the note ran past the page's right edge."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from personality.explain_plots import draw_contributions

    part = {"method": "occlusion", "features": ["a", "b"], "values": np.full((2, 5), 0.01),
            "completeness_gap": [0, 0, 0, 0, 0.03], "units": "score"}
    fig, ax = plt.subplots()
    draw_contributions(ax, part, list("OCEAN"), title="feature contributions (functionals, "
                       "occlusion: ...)\nin place of integrated gradients: the score is not "
                       "differentiable in its input")
    plt.close(fig)
    assert ax.get_title().split("\n")[1:] == [
        "in place of integrated gradients: the score is not differentiable in its input [score]",
        "N: +0.030 of the score change +0.050 not accounted for"]
