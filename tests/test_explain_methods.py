"""Which method explains which model in predict (models/explain.py).

    python -m pytest tests/test_explain_methods.py -q      # ~1 min on one core

Grad-CAM of a two-pathway video model (slow_fast_face_seq) reads the last map of each pathway and
adds them, not the last map of all (a Fast-to-Slow lateral conv at 64 px, the Fast stage alone at
112 px): the layers and the map's shape per crop size, and, on a tiny SlowFast trained here on
clips whose target lives in one region of every frame, a map that peaks there and leaves when that
region is blanked.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.explain import cam_layer, gradcam
from models.registry import build_model
from personality.schemas import TRAITS

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
