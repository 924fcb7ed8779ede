"""DeepPersonality's interpretable models: CAM-DAN+ on face crops and the interpretable audio CNN,
each ending in a class-activation-map head whose per-trait maps are exposed.

    from models import build_model
    model = build_model("interpret_dan_face")
    scores = model.predict({"face": x})        # x (B, 3, 64, 64) normalised -> (B, 5)
    maps = model.cam({"face": x})              # (B, 5, h, w): one map per trait
    model = build_model("audio_interpret_net")
    maps = model.cam({"wave": w})              # w (B, S) 16 kHz -> (B, 5, t): per-time maps

CAM (Zhou et al. 2016, "Learning deep features for discriminative localization"): the last conv
layer's maps f_c (B, C, *S) are averaged over space (or time) straight into one linear unit per
trait, so the trait's logit is the mean over positions of M_k = sum_c w_kc f_c + b_k. `cam`
returns M_k before the sigmoid: its mean over positions is exactly the logit that `forward`
squashes, so a map says where the score came from, in the score's own (logit) units. The head is
therefore fixed to one linear layer (`hidden` must be 0) with a regression output.

- `interpret_dan_face` re-implements DeepPersonality's InterpretDAN (dpcv/modeling/networks/
  interpret_dan.py; its README calls it CAM-DAN+; Ventura et al. 2017, "Interpreting CNN models for
  apparent personality trait regression"): a VGG-16-BN trunk, global average pooling, one linear
  layer, sigmoid. CAM-DAN+ is that same network, so there is one name. Unlike DeepPersonality's,
  the last stage keeps its resolution (no final max pool, as the CAM paper removes the layers after
  conv5): at 64 px the maps are 4 x 4 instead of 2 x 2.
- `audio_interpret_net` re-implements DeepPersonality's AudioInterpretNet
  (audio_interpretability_net.py; Hayat et al. 2019, "On the use of interpretable CNN for
  personality trait recognition from audio"): three blocks of Conv1d - activation - MaxPool -
  Dropout (kernels 8, 6, 6; pools 10, 8, 8; sigmoid activations as published), GAP, one linear
  layer. As in the paper the input is the wave (here average-pooled 16 -> 4 kHz first, the rate
  DeepPersonality resamples to), so the maps run over time; `domain: frequency` feeds the
  per-clip standardised |FFT| of the wave instead, which is what DeepPersonality's data loader
  (interpretability_audio_data.py) gives this network (then the maps run over frequency).
  Even "as published" (sigmoid activations, no batch norm) it differs from DeepPersonality's:
  DeepPersonality's ends in the linear layer, with no sigmoid (here the `regression` head's
  sigmoid), initialises with its initialize_weights (Kaiming), and reads the |FFT| of the whole
  15 s clip (30,604 bins or more at 4 kHz); here the wave source's 3 s crop (its centre at
  evaluation), so `domain: frequency` sees 6,000 bins of 3 s, and widths 16-64 (DP: 64-256).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.audio import min_length
from models.registry import register
from models.visual import (HeadFields, ZooModel, _conv_bn, check_head, finish, image_input,
                           make_config, make_head)

__all__ = ["InterpretDANConfig", "InterpretDAN", "AudioInterpretConfig", "AudioInterpretNet",
           "cam_maps"]


def check_cam_head(cfg: Any, name: str) -> None:
    """A CAM head is GAP straight into one linear layer per trait with a regression output."""
    if cfg.head == "classification" or cfg.hidden != 0:
        raise ValueError(f"{name}: the CAM head is one linear layer after global average pooling: "
                         f"head must be 'regression' or 'regression_z' and hidden 0, got "
                         f"head={cfg.head!r}, hidden={cfg.hidden}")
    check_head(cfg, name)


def cam_maps(head: nn.Module, fmap: Tensor) -> Tensor:
    """Per-trait class activation maps of a RegressionHead with hidden=0 (Dropout, Linear(C, 5))
    over the last conv maps: fmap (B, C, *S) -> (B, 5, *S), M_k = sum_c w_kc f_c + b_k."""
    fc = head.mlp[-1]
    maps = torch.einsum("kc,bc...->bk...", fc.weight, fmap)  # (B, 5, *S)
    return maps + fc.bias.view(1, -1, *([1] * (fmap.dim() - 2)))


class _CAMModel(ZooModel):
    """features = global average of `feature_map`; cam = its per-trait maps (see cam_maps)."""

    def feature_map(self, batch: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.feature_map(batch).flatten(2).mean(dim=2)  # (B, C, *S) -> (B, C)

    def cam(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, 5, *S): the trait maps; their mean over positions is forward's pre-sigmoid logit."""
        return cam_maps(self.head, self.feature_map(batch))


# --------------------------------------------------------------------------------------------------
# CAM-DAN+ (InterpretDAN): VGG-16-BN trunk, GAP, linear


@dataclasses.dataclass
class InterpretDANConfig(HeadFields):
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)  # VGG-16 stages (VGG-16: 64 ... 512, 512)
    convs: tuple[int, ...] = (2, 2, 3, 3, 3)  # 3x3 conv + BN + ReLU per stage (VGG-16's 13)
    pool_last: bool = False  # max pool after the last stage too (DeepPersonality: yes; CAM: no)
    hidden: int = 0  # the CAM head: one linear layer (must stay 0)
    dropout: float = 0.0  # before that layer (InterpretDAN has none)

    def __post_init__(self) -> None:
        self.widths, self.convs = tuple(self.widths), tuple(self.convs)
        check_cam_head(self, "interpret_dan_face")
        if not self.widths or len(self.widths) != len(self.convs) or \
                any(c < 1 for c in self.widths + self.convs):
            raise ValueError("interpret_dan_face: widths and convs: positive, one per stage")


class InterpretDAN(_CAMModel):
    """VGG-16-BN stages (2x2 max pool between them), GAP, one linear unit per trait, sigmoid."""

    inputs = ("face",)

    def __init__(self, config: InterpretDANConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for i, (c, n) in enumerate(zip(config.widths, config.convs)):
            for _ in range(n):
                layers.append(_conv_bn(c_in, c))
                c_in = c
            if i < len(config.widths) - 1 or config.pool_last:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = make_head(config, c_in)

    def feature_map(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.body(image_input(batch, "face"))  # (B, 3, H, W) -> (B, C, H/16, W/16)


@register("interpret_dan_face", modality="visual", inputs=("face",), source="DeepPersonality "
          "CAM-DAN+ / InterpretDAN (interpret_dan.py; Ventura et al. 2017; CAM: Zhou et al. 2016)",
          card="Re-implements DeepPersonality's CAM-DAN+ (Ventura et al. 2017): VGG-16-BN trunk, "
               "global average pooling straight into one linear unit per trait; cam() gives "
               "per-trait maps (B, 5, h, w)")
def interpret_dan_face(*, config: InterpretDANConfig | None = None, **overrides: Any
                       ) -> InterpretDAN:
    return finish(InterpretDAN(make_config(InterpretDANConfig, config, overrides,
                                           "interpret_dan_face")))


# --------------------------------------------------------------------------------------------------
# the interpretable audio CNN (AudioInterpretNet)


@dataclasses.dataclass
class AudioInterpretConfig(HeadFields):
    domain: Literal["time", "frequency"] = "time"  # the wave (paper) or its |FFT| (DP's loader)
    downsample: int = 4  # average-pool the 16 kHz wave by this first (4: 4 kHz, as DP resamples)
    widths: tuple[int, ...] = (16, 32, 64)  # conv blocks (published: 64, 128, 256)
    kernels: tuple[int, ...] = (8, 6, 6)
    pools: tuple[int, ...] = (10, 8, 8)  # max pool per block: 4 kHz / 640 -> one step per 0.16 s
    block_dropout: tuple[float, ...] = (0.1, 0.5, 0.5)
    activation: Literal["sigmoid", "relu"] = "sigmoid"  # published: sigmoid
    batch_norm: bool = False  # BatchNorm1d after each conv (published: none)
    hidden: int = 0  # the CAM head: one linear layer (must stay 0)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for f in ("widths", "kernels", "pools", "block_dropout"):
            setattr(self, f, tuple(getattr(self, f)))
        check_cam_head(self, "audio_interpret_net")
        n = len(self.widths)
        if not n or {len(self.kernels), len(self.pools), len(self.block_dropout)} != {n} or \
                any(v < 1 for v in self.widths + self.kernels + self.pools) or self.downsample < 1:
            raise ValueError("audio_interpret_net: widths, kernels, pools, block_dropout: one per "
                             "block, positive; downsample >= 1")
        if self.domain not in ("time", "frequency") or self.activation not in ("sigmoid", "relu"):
            raise ValueError("audio_interpret_net: domain time|frequency, activation sigmoid|relu")


class AudioInterpretNet(_CAMModel):
    """Conv1d - activation - MaxPool - Dropout blocks over the (downsampled) wave, GAP, linear."""

    inputs = ("wave",)

    def __init__(self, config: AudioInterpretConfig):
        super().__init__()
        self.config = config
        blocks, c_in = [], 1
        for c, k, p, d in zip(config.widths, config.kernels, config.pools, config.block_dropout):
            act = nn.Sigmoid() if config.activation == "sigmoid" else nn.ReLU(inplace=True)
            norm = nn.BatchNorm1d(c) if config.batch_norm else nn.Identity()
            # padding 1 as published: a kernel of 8 shortens the signal by 5 steps
            blocks.append(nn.Sequential(nn.Conv1d(c_in, c, k, padding=1), norm, act,
                                        nn.MaxPool1d(p), nn.Dropout(d)))
            c_in = c
        self.body = nn.Sequential(*blocks)
        self.head = make_head(config, c_in)

    def min_lengths(self) -> dict[str, int]:
        """Its pools shrink time 640-fold with the defaults (4 x 10 x 8 x 8) and each conv
        (padding 1) takes kernel - 3 steps off: 3,660 samples (0.23 s) in the time domain,
        twice the body's input in the frequency domain (half of the spectrum is kept)."""
        c = self.config
        body = min_length([layer for k, p in zip(c.kernels, c.pools) for layer in
                           ((k, 1, 1), (p, p, 0))])
        signal = 2 * body if c.domain == "frequency" else body  # |rfft|[:S // 2]: S // 2 >= body
        return {"wave": min_length([(c.downsample, c.downsample, 0)], signal)}

    def signal(self, wave: Tensor) -> Tensor:
        """The network's 1D input: (B, S) -> (B, 1, S') (time) or (B, 1, S'/2) (frequency)."""
        x = wave.unsqueeze(1)  # (B, 1, S)
        if self.config.downsample > 1:
            x = F.avg_pool1d(x, self.config.downsample)  # (B, 1, S / d): a crude anti-alias filter
        if self.config.domain == "frequency":
            mag = torch.fft.rfft(x.float(), dim=2).abs()[..., :x.shape[2] // 2]  # (B, 1, S'/2)
            # per clip standardisation, as DeepPersonality's loader does
            x = (mag - mag.mean(dim=2, keepdim=True)) / (mag.std(dim=2, keepdim=True) + 1e-10)
        return x

    def feature_map(self, batch: Mapping[str, Tensor]) -> Tensor:
        wave = batch["wave"]
        if wave.dim() != 2:
            raise ValueError(f"batch['wave'] must be (B, S), got {tuple(wave.shape)}")
        return self.body(self.signal(wave))  # (B, 1, S') -> (B, C, t)


@register("audio_interpret_net", modality="audio", inputs=("wave",), source="DeepPersonality "
          "AudioInterpretNet (audio_interpretability_net.py; Hayat et al. 2019)",
          card="Re-implements DeepPersonality's AudioInterpretNet (Hayat et al. 2019): 1D conv "
               "blocks with sigmoid activations on a 3 s crop of the 4 kHz wave (DP: |FFT| of "
               "the whole clip), GAP into one linear unit per trait, plus an output sigmoid DP "
               "lacks; cam() gives per-time maps (B, 5, t)")
def audio_interpret_net(*, config: AudioInterpretConfig | None = None, **overrides: Any
                        ) -> AudioInterpretNet:
    return finish(AudioInterpretNet(make_config(AudioInterpretConfig, config, overrides,
                                                "audio_interpret_net")))
