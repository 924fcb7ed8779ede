"""The spectral representation of frame-level behaviour (`spectrum_model`): Fourier amplitude and
phase of every AU's time series, then convolutions along frequency, re-implementing
DeepPersonality's spectrum model (dpcv/modeling/networks/spectrum_model.py, SpectrumFeatConv1D).

    from models import build_model
    model = build_model("spectrum_model")
    scores = model.predict({"aus": aus, "aus_mask": mask})   # (B, T, 17), (B, T) -> (B, 5)
    spec = model.spectrum(aus, mask)                         # (B, 2, 17, n_freq)

Where it comes from: DeepPersonality's second stage (second_stage_dataset.py, "spectrum" method)
turns a first-stage model's per-frame features or predictions into a length-independent clip
representation: the spectral representation of Song et al. (2020, "Spectral representation of
behaviour primitives for depression analysis", IEEE Trans. Affective Computing), which encodes a
variable-length sequence of frame-level descriptors by the Fourier spectrum of each descriptor,
and which Song et al. (2021, "Self-supervised learning of person-specific facial dynamics for
automatic personality recognition", same journal) use for personality. DeepPersonality samples 100 evenly spaced frames, takes the DFT of each feature channel over time, and keeps
the amplitude and the phase of the first `n_freq` bins. Here the frame-level features are the
AU intensities (input keys aus / aus_mask, as the PerFeX models read them), so each clip becomes
a (2, 17, n_freq) image: 2 planes (amplitude, phase), one row per AU, one column per frequency.

Sampling: `n_samples` steps evenly spaced over each clip's real steps (the mask), as
DeepPersonality does, so every clip has the same number of bins whatever its length; bin f is
then f cycles per clip. Amplitude is divided by n_samples (bin 0 is the AU's mean), phase by pi.

The network (SpectrumFeatConv1D): 2D convs with (1 x k) kernels, i.e. 1D convolutions along
frequency shared by every AU row: conv_in (1x7, 1x5), a residual pair widening and narrowing
(1x3 convs, `widths`), conv_out (1x1 to one plane, then a 1 x n_freq conv that collapses frequency):
one number per AU (B, 17), into the head (one linear layer by default, DeepPersonality's trait_fc).
One change: the published ReLU between the two convs of conv_out is off by default (`out_relu`):
it acts on a single channel, and when that channel's input turns negative for every clip the model
outputs a constant; trained as published on the default data it did so from the first epoch.

Other differences, "as published" (`out_relu: true`) included: DeepPersonality's trait_fc is the
output, with no sigmoid (here the `regression` head's sigmoid); its spectrum is the raw |FFT| and
angle (second_stage_dataset.py; here amplitude / n_samples and phase / pi); its input is a
first-stage model's per-frame predictions or features (a trained network's output), here the AU
intensities; its widths are 64 / 256 / 1024 (here 16 / 32 / 64).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from models.perfex import N_AUS, prepare_inputs
from models.registry import register
from models.visual import HeadFields, ZooModel, check_head, finish, make_config, make_head

__all__ = ["SpectrumConfig", "SpectrumModel", "even_samples", "spectrum"]


def even_samples(x: Tensor, mask: Tensor, n: int) -> Tensor:
    """n steps evenly spaced over each row's real steps: x (B, T, C), mask (B, T) prefix -> (B, n,
    C). Step i of a row with L real steps is floor(i * L / n) (np.linspace(0, L, n, endpoint=False),
    as DeepPersonality samples; a clip shorter than n repeats steps)."""
    lengths = mask.sum(dim=1).clamp_min(1)  # (B,)
    idx = (torch.arange(n, device=x.device)[None, :] * lengths[:, None]) // n  # (B, n)
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))  # (B, n, C)


def spectrum(x: Tensor, n_freq: int) -> Tensor:
    """Amplitude and phase of each channel's DFT over time: x (B, n, C) -> (B, 2, C, n_freq),
    amplitude / n, phase / pi, the first n_freq bins (n_freq <= n // 2 + 1)."""
    n = x.shape[1]
    f = torch.fft.rfft(x.float().transpose(1, 2), dim=2)[..., :n_freq]  # (B, C, n_freq) complex
    return torch.stack([f.abs() / n, f.angle() / math.pi], dim=1)  # (B, 2, C, n_freq)


@dataclasses.dataclass
class SpectrumConfig(HeadFields):
    n_aus: int = N_AUS  # frame-level features per step
    seq_len: int = 700  # at most this many steps are read (as the PerFeX models)
    n_samples: int = 64  # evenly spaced steps per clip (DeepPersonality: 100)
    n_freq: int = 33  # bins kept (n_samples // 2 + 1: all; DeepPersonality: 80 of 100 frames' FFT)
    widths: tuple[int, int, int] = (16, 32, 64)  # conv_in / residual widths (published: 64, 256,
    #                                              1024)
    out_relu: bool = False  # ReLU on the one-plane 1x1 conv before the frequency collapse
    #                         (published: yes; that single channel can die for every input, and
    #                         here it did: constant predictions from epoch 1, docs/models.md)
    hidden: int = 0  # head: one linear layer from the 17 per-AU numbers (DeepPersonality's trait_fc)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        check_head(self, "spectrum_model")
        if len(self.widths) != 3 or any(c < 1 for c in self.widths) or self.n_samples < 2 or \
                not 1 <= self.n_freq <= self.n_samples // 2 + 1:
            raise ValueError("spectrum_model: three positive widths, n_samples >= 2, n_freq in "
                             "1 .. n_samples // 2 + 1")


def _conv(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    """A (1 x k) conv along frequency, same length, + ReLU."""
    return [nn.Conv2d(c_in, c_out, (1, k), padding=(0, k // 2)), nn.ReLU(inplace=True)]


class SpectrumModel(ZooModel):
    """Spectrum of the AU series -> frequency convolutions -> one value per AU -> head."""

    inputs = ("aus", "aus_mask")
    # predict's per-AU contributions (models/contributions.py) use occlusion instead: integrated
    # gradients go from 0 to x along a x, whose DFT is a times x's, so the phase plane is the same
    # for every a > 0 and jumps at a = 0, where no gradient sees it (their sums missed ~10x what
    # they found). Each AU row is its own until the linear head: occlusion is complete in logits.
    ig_unsuitable = ("the Fourier phase of a x is that of x for every a > 0, so the path from 0 "
                     "never moves it")

    def __init__(self, config: SpectrumConfig):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.widths
        self.conv_in = nn.Sequential(*_conv(2, c0, 7), *_conv(c0, c1, 5))
        self.widen = nn.Sequential(*_conv(c1, c1, 3), *_conv(c1, c2, 3))
        self.narrow = nn.Sequential(*_conv(c2, c1, 3))
        self.conv_out = nn.Sequential(nn.Conv2d(c1, 1, 1),
                                      nn.ReLU(inplace=True) if config.out_relu else nn.Identity(),
                                      nn.Conv2d(1, 1, (1, config.n_freq)))
        self.head = make_head(config, config.n_aus)

    def spectrum(self, aus: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, 17) AUs (+ prefix mask) -> (B, 2, 17, n_freq) amplitude and phase planes."""
        aus, mask, _ = prepare_inputs(aus, mask, n_aus=self.config.n_aus,
                                      seq_len=self.config.seq_len)
        return spectrum(even_samples(aus, mask, self.config.n_samples), self.config.n_freq)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        h = self.conv_in(self.spectrum(batch["aus"], batch.get("aus_mask")))  # (B, c1, 17, F)
        h = self.narrow(self.widen(h)) + h  # the residual pair, (B, c1, 17, F)
        return self.conv_out(h).flatten(1)  # (B, 1, 17, 1) -> (B, 17)


@register("spectrum_model", modality="au", inputs=("aus", "aus_mask"), source="DeepPersonality "
          "SpectrumFeatConv1D (spectrum_model.py; spectral representation, Song et al. 2020 / "
          "2021)",
          card="Re-implements DeepPersonality's spectrum model (Song et al. 2020/2021) on AU "
               "series (DP: a first-stage model's per-frame outputs): scaled Fourier amplitude and "
               "phase (DP: raw), 1 x k convolutions along frequency, one value per AU into a "
               "linear head, plus an output sigmoid DP lacks")
def spectrum_model(*, config: SpectrumConfig | None = None, **overrides: Any) -> SpectrumModel:
    return finish(SpectrumModel(make_config(SpectrumConfig, config, overrides, "spectrum_model")))
