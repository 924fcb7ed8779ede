"""The image operations the image sources' augmentation uses (models/data_image.py), on uint8
tensors (..., 3, H, W): antialiased resize, resized crop, horizontal flip, and brightness /
contrast / saturation jitter.

    from models import image_ops

    x = image_ops.resized_crop(x, top, left, h, w, 64)   # (..., 3, H, W) -> (..., 3, 64, 64)
    x = image_ops.adjust_contrast(x, 1.2)

Written here so that the project needs no torchvision. The definitions are the usual ones
(torchvision's and PIL's): brightness scales toward black, contrast toward the image's mean grey,
saturation toward the pixel's own grey (ITU-R 601 luma weights); results are rounded to the
nearest level (torchvision truncates: its jitter darkens by half a level on average) and clipped
to 0-255. The resize goes through float32 (torchvision has a uint8 kernel, ~3x faster; a 6-frame
clip takes ~1.4 ms, far below a training step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize", "resized_crop", "horizontal_flip", "adjust_brightness", "adjust_contrast",
           "adjust_saturation"]

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights of R, G, B in grey


def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def resize(x: Tensor, size: int) -> Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, size, size), bilinear with antialiasing (a
    downscale averages every source pixel it covers instead of sampling a few)."""
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:]).float()  # (N, 3, H, W): interpolate takes 4-D
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return _to_uint8(out).reshape(*lead, *out.shape[-3:])


def resized_crop(x: Tensor, top: int, left: int, h: int, w: int, size: int) -> Tensor:
    """The h x w window at (top, left), resized to size x size."""
    return resize(x[..., top:top + h, left:left + w], size)


def horizontal_flip(x: Tensor) -> Tensor:
    return x.flip(-1)


def _blend(x: Tensor, other: Tensor, factor: float) -> Tensor:
    """factor * x + (1 - factor) * other, as uint8: factor 1 keeps x, 0 gives `other`."""
    return _to_uint8(factor * x.float() + (1 - factor) * other)


def _grey(x: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float (..., 1, H, W) luma."""
    r, g, b = x.float().unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def adjust_brightness(x: Tensor, factor: float) -> Tensor:
    return _blend(x, torch.zeros((), dtype=torch.float32), factor)


def adjust_contrast(x: Tensor, factor: float) -> Tensor:
    """Toward each image's mean grey (one mean per (3, H, W) image)."""
    return _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: float) -> Tensor:
    return _blend(x, _grey(x), factor)
