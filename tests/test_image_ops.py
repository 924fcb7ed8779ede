"""models/image_ops.py (the augmentation's resize, crop, flip and colour jitter, in place of
torchvision's) against Pillow's own implementations of the same operations, on a real face crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from models import image_ops

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real 112 px RGB crop (H, W, 3) uint8: the centre square of the fixture face photo."""
    with Image.open(FIXTURES / "single_face.jpg") as img:
        rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    side = min(h, w)
    square = rgb[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    return np.asarray(Image.fromarray(square).resize((112, 112), Image.BILINEAR))


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def _array(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy().astype(int)


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
@pytest.mark.parametrize("name, enhancer", [("brightness", ImageEnhance.Brightness),
                                            ("saturation", ImageEnhance.Color),
                                            ("contrast", ImageEnhance.Contrast)])
def test_colour_jitter_matches_pillow(face, name, enhancer, factor):
    ours = _array(getattr(image_ops, f"adjust_{name}")(_tensor(face), factor))
    pil = np.asarray(enhancer(Image.fromarray(face)).enhance(factor)).astype(int)
    # Pillow rounds its grey to an integer (and its contrast mean too): a grey level or two
    assert np.abs(ours - pil).max() <= 2 and np.abs(ours - pil).mean() < 1.0
    if factor == 1.0:
        assert (ours == face).all()


def test_resize_matches_pillow_antialiased(face):
    ours = _array(image_ops.resize(_tensor(face), 48))
    pil = np.asarray(Image.fromarray(face).resize((48, 48), Image.BILINEAR)).astype(int)
    assert np.abs(ours - pil).mean() < 1.0 and np.abs(ours - pil).max() <= 4
    stripes = torch.zeros(3, 64, 64, dtype=torch.uint8)
    stripes[..., ::2] = 255  # antialiasing averages 1-px stripes to grey instead of aliasing
    inner = image_ops.resize(stripes, 16)[..., 1:-1].float()  # the edge columns weigh unevenly
    assert (inner - 127.5).abs().max() <= 1


def test_crop_flip_and_leading_axes(face):
    clip = torch.stack([_tensor(face), _tensor(face).flip(0)])  # (T=2, 3, H, W)
    out = image_ops.resized_crop(clip, 10, 20, 60, 50, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[0], image_ops.resize(_tensor(face)[:, 10:70, 20:70], 32))
    assert torch.equal(image_ops.horizontal_flip(out)[..., 0], out[..., -1])
    grey = image_ops.adjust_saturation(clip, 0.0)
    assert (grey.max(dim=1).values - grey.min(dim=1).values).max() <= 1
