"""The audio models: a CNN on log-mel, a 1D ResNet on the raw wave, a linear / MLP model on audio
functionals. Only the second re-implements a DeepPersonality network, and loosely:

- `logmel_cnn` is ours. DeepPersonality has no log-mel model: its audio networks read the raw
  wave (AudioResNet18, CR-Net's audio branch), a log filterbank (AudLinearRegressor), MFCC /
  mid-term features (the bimodal LSTM's audio), VGGish embeddings (multi_modal_pred_net's audio
  net), openSMILE functionals (SoundNet) or |FFT| (AudioInterpretNet). It stands in for their
  audio streams here (bimodal_resnet, bimodal_lstm, crnet and multi_modal_pred_net use its
  encoder or the log-mel too).
- `wave_resnet1d` follows DeepPersonality's AudioResNet18 (audio_visual_residual.py) at a smaller
  size: stem kernel 80 (DP: 49), a 4 / 4 max pool (DP: kernel 9, stride 4), one block per stage
  (DP: 2), stage widths width x 1, 2, 4, 8 (params: 8-64; DP: 32-256), mean + max pooling (DP:
  average) into an MLP head (DP: one Linear + sigmoid); 3 s crops (DP: 50,176 samples, 3.1 s).
- `audio_fn_linear` is ours too: a linear model (or an MLP) on the audio stage's per-video
  functionals (636 with the default librosa + eGeMAPS sets), input dropout 0.1. DeepPersonality's
  AudLinearRegressor (dan.py) is one Linear + sigmoid on the flattened log filterbank of the whole
  clip (26 bands x 3,059 frames = 79,534 inputs; SGD, weight decay 6.5); its SoundNet
  (sound_feat_mlp.py) is an MLP with batch norm on 988 openSMILE functionals.

    model = build_model("logmel_cnn")
    model.predict({"logmel": x})          # x (B, 64, T) standardised log-mel -> (B, 5)

Inputs (models/data_audio.py): `logmel` (B, n_mels, T) float, standardised per band with train-split
statistics; `wave` (B, S) float 16 kHz mono in [-1, 1]; `audio_fn` (B, F) float functionals,
standardised with train-split statistics. Heads and `weights` as in models/visual.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register
from models.visual import HeadFields, ZooModel, check_head, finish, make_config, make_head

__all__ = ["LogmelCNNConfig", "LogmelCNN", "WaveResNetConfig", "WaveResNet1D", "AudioFnConfig",
           "AudioFnMLP", "LogmelEncoder", "min_length"]


def min_length(layers: list[tuple[int, int, int]], out: int = 1) -> int:
    """The shortest input a chain of 1D convolutions / poolings (floor mode, dilation 1) maps to
    at least `out` steps. `layers`: (kernel, stride, padding) in forward order. Each gives
    floor((L + 2 padding - kernel) / stride) + 1 steps, so it needs
    L >= (m - 1) stride + kernel - 2 padding for m of them (and L >= 1)."""
    m = out
    for kernel, stride, padding in reversed(layers):
        m = max((m - 1) * stride + kernel - 2 * padding, 1)
    return m


def logmel_input(batch: Mapping[str, Tensor], n_mels: int) -> Tensor:
    x = batch["logmel"]
    if x.dim() != 3 or x.shape[1] != n_mels:
        raise ValueError(f"batch['logmel'] must be (B, {n_mels}, T), got {tuple(x.shape)}")
    return x


class LogmelEncoder(nn.Module):
    """VGG-ish 2D CNN over the (mel, time) image: blocks of conv3x3-BN-ReLU + 2x2 max pool, then
    mean over mel and mean + max over time. x (B, n_mels, T) -> (B, 2 * widths[-1]). `time_pool` > 1
    average-pools the input over time first (hop 10 ms -> time_pool * 10 ms): the first conv runs
    on the full-resolution image, so this divides the cost nearly by time_pool."""

    def __init__(self, widths: tuple[int, ...], *, time_pool: int = 1):
        super().__init__()
        self.time_pool = time_pool
        layers, c_in = [], 1
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.out_features = 2 * widths[-1]
        self.n_blocks = len(widths)

    def min_steps(self) -> int:
        """The fewest log-mel steps T it takes: each block's 2x2 max pool halves time (floor),
        so the pooled input needs 2 ** blocks steps; the time pool (ceil mode) gives
        ceil(T / p) of them, so T >= (2 ** blocks - 1) p + 1. Fewer: torch's "output size is
        too small". 16 steps (0.16 s) for the default 4 blocks."""
        pooled = min_length([(2, 2, 0)] * self.n_blocks)  # 2 ** blocks
        return (pooled - 1) * self.time_pool + 1

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pool > 1:
            p = self.time_pool
            x = F.avg_pool1d(x, p, p, ceil_mode=True)  # (B, n_mels, T) -> (B, n_mels, ceil(T/p))
        h = self.body(x.unsqueeze(1))  # (B, n_mels, T) -> (B, 1, n_mels, T) -> (B, C, M', T')
        h = h.mean(dim=2)  # (B, C, T')
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # (B, 2C)


@dataclasses.dataclass
class LogmelCNNConfig(HeadFields):
    n_mels: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128)  # conv block widths (each halves mel and time)
    time_pool: int = 1  # average-pool the input over this many 10 ms steps first (cost / ~p)

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        check_head(self, "logmel_cnn")
        if not self.widths or any(c < 1 for c in self.widths) or self.time_pool < 1:
            raise ValueError("logmel_cnn: widths and time_pool must be positive")


class LogmelCNN(ZooModel):
    inputs = ("logmel",)

    def __init__(self, config: LogmelCNNConfig):
        super().__init__()
        self.config = config
        self.encoder = LogmelEncoder(config.widths, time_pool=config.time_pool)
        self.head = make_head(config, self.encoder.out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.encoder(logmel_input(batch, self.config.n_mels))  # (B, 64, T) -> (B, D)

    def min_lengths(self) -> dict[str, int]:
        return {"logmel": self.encoder.min_steps()}


@register("logmel_cnn", modality="audio", inputs=("logmel",), source="ours (VGG-style blocks; "
          "DeepPersonality has no log-mel model: it stands in for DP's audio networks)",
          card="2D CNN on the log-mel spectrogram of a 3 s crop, mean over mel, mean + max over "
               "time, MLP head; ours, not a DeepPersonality network")
def logmel_cnn(*, config: LogmelCNNConfig | None = None, **overrides: Any) -> LogmelCNN:
    return finish(LogmelCNN(make_config(LogmelCNNConfig, config, overrides, "logmel_cnn")))


class Block1D(nn.Module):
    """1D basic residual block: (B, C_in, S) -> (B, C_out, S / stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int = 9):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.down = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + idt)


@dataclasses.dataclass
class WaveResNetConfig(HeadFields):
    stem_kernel: int = 80  # first conv: 5 ms at 16 kHz (M5 / SoundNet-style; DP AudioResNet18: 49)
    stem_stride: int = 4
    width: int = 16  # stem channels; stages width * 1, 2, 4, 8 (DP's AudioResNet18: 32)
    layers: tuple[int, ...] = (1, 1, 1, 1)  # blocks per stage (DP: 2); stages after the first /4
    stage_stride: int = 4

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_head(self, "wave_resnet1d")
        if self.width < 1 or not self.layers or self.stem_kernel < 1:
            raise ValueError("wave_resnet1d: width, layers and stem_kernel must be positive")


class WaveResNet1D(ZooModel):
    """1D ResNet on the raw wave: strided stem conv + pool, residual stages, global mean + max
    (DeepPersonality's AudioResNet18: stem 49, pool 9 / 4, 2 blocks per stage, average pooling,
    one Linear; the module docstring lists the differences)."""

    inputs = ("wave",)

    def __init__(self, config: WaveResNetConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv1d(1, w, config.stem_kernel, stride=config.stem_stride,
                      padding=config.stem_kernel // 2, bias=False),
            nn.BatchNorm1d(w), nn.ReLU(inplace=True), nn.MaxPool1d(4))
        blocks, c_in = [], w
        for i, n in enumerate(config.layers):
            c = w * 2 ** i
            for k in range(n):
                blocks.append(Block1D(c_in, c, stride=config.stage_stride if (i > 0 and k == 0)
                                      else 1))
                c_in = c
        self.body = nn.Sequential(*blocks)
        self.head = make_head(config, 2 * c_in)

    def min_lengths(self) -> dict[str, int]:
        """The stem conv and its max pool of 4 bound it (12 samples by default): each block's
        convs (kernel 9, padding 4) and 1x1 shortcut give >= 1 step from >= 1."""
        c = self.config
        return {"wave": min_length([(c.stem_kernel, c.stem_stride, c.stem_kernel // 2),
                                    (4, 4, 0)])}

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["wave"]
        if x.dim() != 2:
            raise ValueError(f"batch['wave'] must be (B, S), got {tuple(x.shape)}")
        h = self.body(self.stem(x.unsqueeze(1)))  # (B, S) -> (B, 1, S) -> (B, C, S')
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # (B, 2C)


@register("wave_resnet1d", modality="audio", inputs=("wave",), source="after DeepPersonality's "
          "AudioResNet18 (audio_visual_residual.py; Güçlütürk et al. 2016 audio stream)",
          card="1D ResNet on a 3 s crop of the raw 16 kHz wave: stem 80 (DP: 49), max pool 4 (DP: "
               "9 / 4), 1 block per stage (DP: 2), mean + max pooling (DP: average), MLP head "
               "(DP: one Linear)")
def wave_resnet1d(*, config: WaveResNetConfig | None = None, **overrides: Any) -> WaveResNet1D:
    return finish(WaveResNet1D(make_config(WaveResNetConfig, config, overrides, "wave_resnet1d")))


@dataclasses.dataclass
class AudioFnConfig(HeadFields):
    n_features: int = 0  # functionals per video; 0 = inferred at the first forward (lazy layer)
    hidden: int = 0  # 0 = linear model on the functionals (ours: DP's linear regressor reads a
    #                  79,534-d log filterbank, not functionals)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_head(self, "audio_fn_linear")
        if self.n_features < 0:
            raise ValueError("audio_fn_linear: n_features must be >= 0")


class AudioFnMLP(ZooModel):
    """Linear (hidden=0) or MLP model on standardised audio functionals. With n_features=0 the
    first layer is nn.LazyLinear: run one forward before building the optimizer (or set
    n_features; data_audio's audio_fn source reports its `n_features`)."""

    inputs = ("audio_fn",)

    def __init__(self, config: AudioFnConfig):
        super().__init__()
        self.config = config
        self.head = make_head(config, max(config.n_features, 1))
        if config.n_features == 0:  # replace the first Linear by a lazy one
            mlp = self.head.mlp
            idx = next(i for i, m in enumerate(mlp) if isinstance(m, nn.Linear))
            mlp[idx] = nn.LazyLinear(mlp[idx].out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["audio_fn"]
        if x.dim() != 2:
            raise ValueError(f"batch['audio_fn'] must be (B, F), got {tuple(x.shape)}")
        return x.nan_to_num(0.0)  # (B, F): NaN functionals (silent clips) = the train mean


@register("audio_fn_linear", modality="audio", inputs=("audio_fn",), source="ours (not "
          "DeepPersonality's AudLinearRegressor, a Linear + sigmoid on the flattened 79,534-d log "
          "filterbank of the clip)", card="Linear (hidden=0) or MLP model on the standardised "
          "per-video audio functionals (fn_*, egemaps_*: 636 by default), input dropout 0.1")
def audio_fn_linear(*, config: AudioFnConfig | None = None, **overrides: Any) -> AudioFnMLP:
    return finish(AudioFnMLP(make_config(AudioFnConfig, config, overrides, "audio_fn_linear")))
