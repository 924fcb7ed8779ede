"""PerFeX's models on OpenFace AU sequences: a multi-scale 1D-CNN and a hybrid SE-FCN + attention-LSTM.

    from models import build_model
    from models.perfex import collate_aus

    model = build_model("perfex_cnn", head="classification")      # or "perfex_hybrid"
    aus, mask = collate_aus([seq_a, seq_b], seq_len=model.config.seq_len)  # (B, T, 17), (B, T)
    batch = {"aus": aus, "aus_mask": mask}
    outputs = model(batch)                  # logits (B, 5, 5) or sigmoid scores (B, 5)
    loss = model.loss(outputs, targets)     # targets (B, 5) in [0, 1]; NaN = unlabelled
    scores = model.decode(outputs)          # (B, 5) in [0, 1]; model.predict(batch) does both

Inputs: `aus` (B, T, 17) AU intensities (`personality.schemas.AU_INTENSITY` order, 0-5) and `aus_mask`
(B, T) bool, True on real steps, a prefix per row (padding at the end). Without a mask every step
is real. At most `config.seq_len` steps are used (PerFeX's 700-frame clips).

Defects of the published code (PerFeX's attn_*.py, 1dcnn_*.py) fixed here:
- the LSTM ran on (B, T, F) input without `batch_first`, so it recurred over the batch and the
  attention branch ignored each clip's own sequence: here `batch_first=True`, packed by length;
- batch size 1 only: every op here is batched and padding-aware, a clip's output does not depend
  on its batch-mates (eval mode) nor on how far it is padded;
- pooling over padding: convolutions re-zero padded steps after every layer, pooling, squeeze-excite,
  batch norm statistics and attention see real steps only;
- the head is an MLP with an activation between its layers (Linear-ReLU-Dropout-Linear), not a
  stack of linear layers that collapses to one.
(Split-after-augmentation, missing seeds and the test set inside the training file are data-side
defects, fixed in `ingest` / `augment` / `train`.)

Other differences from the published models, not defect fixes (checked against PerFeX's
1dcnn_train.py and attn_train.py; docs/models.md, "Against PerFeX", has the table):
- perfex_cnn: mean + max pooling of each branch (PerFeX: the mean only, AdaptiveAvgPool1d, over
  all 700 padded steps), so the head reads 1024 features (PerFeX: 512); no Dropout(0.5) after each
  branch's second conv (PerFeX has one per branch); head hidden 256 (PerFeX: 128).
- perfex_hybrid, SE-FCN: batch norm after all four convs (PerFeX defines bn1 / bn2 and never
  applies them: no batch norm at all); squeeze-excite after the first two convs (PerFeX: after all
  four); no Dropout(0.5) after SE 1 and SE 3; "same" padding (PerFeX's k8 conv, padding 4, adds a
  step).
- perfex_hybrid, LSTM branch: the LSTM reads the 17 AUs directly (PerFeX: a Linear(17 -> 512) AU
  embedding plus an MLP of a sinusoidal timestep embedding); hidden 128 (PerFeX's LSTM that runs
  has 256; its `lstm_hidden_size=128` LSTM is never called); single-hop additive attention over the
  real steps (PerFeX: a 256-hop structured self-attention, attention length 700, whose 256 x 256
  output a Linear(256 -> 1) collapses to 256 features); dropout 0.3 on the context (PerFeX: 0.5);
  so the head reads 256 + 128 = 384 features (PerFeX: 512) through hidden 256 (PerFeX: 256, 128).
- Training: AdamW, lr 0.002, cosine, at most 30 epochs with early stopping on val CCC, batch 32
  (params.yaml), where PerFeX trains with Adam, lr 1e-4, 200 epochs, batch 1, on a random 80 / 20
  split with no validation set. The augmentation differs too (stages/augment.py).

Two heads (`head=` in the config): "classification", 25 logits = 5 traits x 5 bins (bin = floor(4p),
`models.metrics.to_bins`), summed cross-entropy over traits, decoded to [0, 1] by the expected bin
value or the argmax bin's value (`models.metrics.bin_values`); "regression", 5 sigmoid outputs, MSE.

One file because the two PerFeX models share the masked layers and the heads defined here
(the other model families import the heads from it).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.batching import normalise_image_keys
from models.metrics import N_BINS, bin_values
from models.registry import register
from personality.schemas import AU_INTENSITY, TRAITS

__all__ = ["PerfexCNNConfig", "PerfexHybridConfig", "PerfexCNN", "PerfexHybrid",
           "ClassificationHead", "RegressionHead", "MaskedBatchNorm1d", "SqueezeExcite",
           "AttentionLSTM", "collate_aus", "prepare_inputs", "masked_mean", "masked_max",
           "perfex_cnn", "perfex_hybrid"]

N_AUS = len(AU_INTENSITY)  # 17
N_TRAITS = len(TRAITS)  # 5
HeadKind = Literal["classification", "regression", "regression_z"]  # regression_z: unbounded,
#                                                                     for z-scored labels (UDIVA)
DecodeKind = Literal["expectation", "argmax"]


# --------------------------------------------------------------------------------------------------
# configs (flat, commented defaults; every field is a params.yaml key under train.model_config)


@dataclasses.dataclass
class PerfexCNNConfig:
    n_aus: int = N_AUS  # AU intensities per time step
    seq_len: int = 700  # at most this many steps are used (PerFeX's clip length in frames)
    kernel_sizes: tuple[int, ...] = (3, 5, 7, 9)  # one branch per kernel size
    channels: tuple[int, int] = (64, 128)  # each branch: n_aus -> 64 -> 128
    batch_norm: bool = False  # masked BatchNorm after each conv of a branch
    hidden: int = 256  # head MLP width
    dropout: float = 0.3  # in the head
    head: HeadKind = "classification"
    decode: DecodeKind = "expectation"  # classification only: expected bin value or argmax bin

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(self.kernel_sizes)
        self.channels = tuple(self.channels)
        _check_common(self, "perfex_cnn")
        if not self.kernel_sizes or any(k < 1 for k in self.kernel_sizes):
            raise ValueError(f"perfex_cnn: kernel_sizes must be positive, got {self.kernel_sizes}")
        if len(self.channels) != 2 or any(c < 1 for c in self.channels):
            raise ValueError(f"perfex_cnn: channels must be two positive widths, got {self.channels}")


@dataclasses.dataclass
class PerfexHybridConfig:
    n_aus: int = N_AUS  # AU intensities per time step
    seq_len: int = 700  # at most this many steps are used
    fcn_channels: tuple[int, ...] = (128, 256, 256, 256)  # SE-FCN branch conv widths
    fcn_kernels: tuple[int, ...] = (8, 5, 3, 3)  # and kernel sizes
    se_blocks: int = 2  # squeeze-excite after the first `se_blocks` convs (as in MLSTM-FCN)
    se_reduction: int = 16  # squeeze-excite bottleneck: channels // reduction
    lstm_hidden: int = 128  # attention-LSTM branch
    lstm_layers: int = 1
    attention_dim: int = 64  # additive attention: v^T tanh(W h_t + b)
    lstm_dropout: float = 0.3  # on the attended LSTM context
    hidden: int = 256  # head MLP width
    dropout: float = 0.3  # in the head
    head: HeadKind = "classification"
    decode: DecodeKind = "expectation"

    def __post_init__(self) -> None:
        self.fcn_channels = tuple(self.fcn_channels)
        self.fcn_kernels = tuple(self.fcn_kernels)
        _check_common(self, "perfex_hybrid")
        if len(self.fcn_channels) != len(self.fcn_kernels) or not self.fcn_channels:
            raise ValueError(f"perfex_hybrid: fcn_channels {self.fcn_channels} and fcn_kernels "
                             f"{self.fcn_kernels} must be non-empty and of equal length")
        if not 0 <= self.se_blocks <= len(self.fcn_channels):
            raise ValueError(f"perfex_hybrid: se_blocks must be 0..{len(self.fcn_channels)}, "
                             f"got {self.se_blocks}")
        if not 0.0 <= self.lstm_dropout < 1.0:
            raise ValueError(f"perfex_hybrid: lstm_dropout must be in [0, 1), got {self.lstm_dropout}")


def _check_common(cfg: Any, name: str) -> None:
    if cfg.head not in ("classification", "regression", "regression_z"):
        raise ValueError(f"{name}: head must be 'classification', 'regression' or 'regression_z', "
                         f"got {cfg.head!r}")
    if cfg.decode not in ("expectation", "argmax"):
        raise ValueError(f"{name}: decode must be 'expectation' or 'argmax', got {cfg.decode!r}")
    if cfg.n_aus < 1 or cfg.seq_len < 1 or cfg.hidden < 1:
        raise ValueError(f"{name}: n_aus, seq_len and hidden must be positive")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {cfg.dropout}")


def make_config(cls: type, config: Any, overrides: dict, name: str) -> Any:
    """cls(**config fields, **overrides); an unknown key -> ValueError naming it and the known ones.
    Lists (params.yaml has no tuples) become tuples; the dataclass's __post_init__ validates."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name}: unknown config key {unknown[0]!r} "
                         f"(known: {', '.join(sorted(known))})")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    base = config if config is not None else cls()
    return dataclasses.replace(base, **overrides)


# --------------------------------------------------------------------------------------------------
# inputs and masked reductions


def collate_aus(sequences: Sequence[Any], *, seq_len: int = 700,
                n_aus: int = N_AUS) -> tuple[Tensor, Tensor]:
    """Stack variable-length (T_i, 17) AU sequences into a zero-padded batch.

    Returns aus (B, T, 17) float32 with T = min(max T_i, seq_len), and mask (B, T) bool. Longer
    sequences keep their first `seq_len` steps. NaN values (frames without a face) become 0, the
    neutral intensity, so they cannot poison a batch.
    """
    if not len(sequences):
        raise ValueError("collate_aus: no sequences")
    arrays = [np.asarray(s, dtype=np.float32) for s in sequences]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != n_aus:
            raise ValueError(f"collate_aus: sequence {i} has shape {a.shape}, expected (T, {n_aus})")
    t_max = max(1, min(seq_len, max(a.shape[0] for a in arrays)))
    aus = torch.zeros(len(arrays), t_max, n_aus)  # (B, T, 17)
    mask = torch.zeros(len(arrays), t_max, dtype=torch.bool)  # (B, T)
    for i, a in enumerate(arrays):
        n = min(a.shape[0], t_max)
        aus[i, :n] = torch.from_numpy(np.nan_to_num(a[:n], nan=0.0))
        mask[i, :n] = True
    return aus, mask


def prepare_inputs(aus: Tensor, mask: Tensor | None, *, n_aus: int,
                   seq_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """Check and normalise model inputs: crop to seq_len, zero padded steps (NaN there included).

    Returns aus (B, T, n_aus), mask (B, T) bool and lengths (B,) int64 on the CPU (for packing).
    A row with no real step is treated as one all-zero step, so every branch stays defined.
    """
    if aus.ndim != 3 or aus.shape[-1] != n_aus:
        raise ValueError(f"aus must have shape (B, T, {n_aus}), got {tuple(aus.shape)}")
    aus = aus[:, :seq_len].float()  # (B, T, 17)
    B, T, _ = aus.shape
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=aus.device)
    else:
        if mask.ndim != 2 or mask.shape[0] != B or mask.shape[1] < T:
            raise ValueError(f"aus_mask must have shape ({B}, {aus.shape[1]}), got {tuple(mask.shape)}")
        mask = mask[:, :T].bool()  # (B, T)
    lengths = mask.sum(dim=1)  # (B,)
    steps = torch.arange(T, device=mask.device)
    if not torch.equal(mask, steps[None, :] < lengths[:, None]):
        # packing for the LSTM (and the zero-padding argument for the convs) needs real steps first
        raise ValueError("aus_mask must be a prefix mask per row (real steps first, then padding)")
    empty = lengths == 0
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
        lengths = lengths.clamp_min(1)
    aus = aus.masked_fill(~mask[:, :, None], 0.0)  # (B, T, 17); masked_fill, not *: NaN * 0 = NaN
    return aus, mask, lengths.cpu()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real steps. x (B, C, T), mask (B, T) -> (B, C)."""
    w = mask[:, None, :].to(x.dtype)  # (B, 1, T)
    return (x * w).sum(dim=2) / w.sum(dim=2).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over real steps. x (B, C, T), mask (B, T) -> (B, C)."""
    return x.masked_fill(~mask[:, None, :], float("-inf")).amax(dim=2)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over (B, C, T) whose training statistics use real steps only.

    In eval mode (or without a mask) it is nn.BatchNorm1d. Padding would otherwise drag the batch
    mean towards the padded value and make a clip's features depend on its batch-mates' lengths.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # x (B, C, T)
        if mask is None or not self.training:
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # statistics in float32, as BatchNorm's under bf16 autocast
        w = mask[:, None, :].float()  # (B, 1, T)
        n = w.sum()
        mean = (x * w).sum(dim=(0, 2)) / n  # (C,)
        var = ((x - mean[None, :, None]) ** 2 * w).sum(dim=(0, 2)) / n  # (C,), biased as BN's
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                unbiased = var * n / (n - 1).clamp_min(1.0)  # running_var is unbiased, as BN's
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)  # (B, C, T)
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y.to(dtype)


class SqueezeExcite(nn.Module):
    """Channel re-weighting from the masked temporal mean (Hu et al.). x (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, *, reduction: int = 16):
        super().__init__()
        inner = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, inner)
        self.fc2 = nn.Linear(inner, channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        s = masked_mean(x, mask)  # (B, C)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # (B, C)
        return x * s[:, :, None]  # (B, C, T)


class _ConvBNReLU(nn.Module):
    """Conv1d ("same") -> optional masked BN -> ReLU -> re-zero padding.

    Re-zeroing after every layer means a real step only ever sees real values or zeros, exactly as
    if the clip had been convolved alone with zero padding: outputs do not depend on padding.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, *, batch_norm: bool):
        super().__init__()
        # "same" padding done by hand: Conv1d(padding="same") warns and copies for even kernels (k8)
        self.pad = ((kernel - 1) // 2, kernel // 2)
        self.conv = nn.Conv1d(c_in, c_out, kernel)
        self.bn = MaskedBatchNorm1d(c_out) if batch_norm else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, C_in, T), mask (B, T)
        h = self.conv(F.pad(x, self.pad))  # (B, C_in, T + k - 1) -> (B, C_out, T)
        if self.bn is not None:
            h = self.bn(h, mask)
        return F.relu(h).masked_fill(~mask[:, None, :], 0.0)  # (B, C_out, T)


# --------------------------------------------------------------------------------------------------
# heads


class ClassificationHead(nn.Module):
    """MLP -> 25 logits viewed as (B, 5 traits, 5 bins); CE summed over traits; decode to [0, 1]."""

    def __init__(self, in_features: int, *, hidden: int, dropout: float,
                 decode: DecodeKind = "expectation"):
        super().__init__()
        self.decode_mode = decode
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, N_TRAITS * N_BINS))
        # the [0, 1] score each bin stands for; a buffer so it follows .to(device)
        self.register_buffer("bin_values", torch.tensor(bin_values(), dtype=torch.float32),
                             persistent=False)

    def forward(self, features: Tensor) -> Tensor:  # features (B, D)
        return self.mlp(features).view(-1, N_TRAITS, N_BINS)  # (B, 5, 5)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Sum over traits of the cross-entropy against bin floor(4p), each averaged over the rows
        labelled for that trait. targets (B, 5) in [0, 1], NaN = unlabelled."""
        valid = ~torch.isnan(targets)  # (B, 5)
        bins = torch.floor(4.0 * targets.nan_to_num(0.0)).clamp(0, N_BINS - 1).long()  # (B, 5)
        ce = F.cross_entropy(logits.reshape(-1, N_BINS), bins.reshape(-1),
                             reduction="none").view_as(targets)  # (B, 5)
        per_trait = (ce * valid).sum(dim=0) / valid.sum(dim=0).clamp_min(1)  # (5,)
        return per_trait.sum()

    def proba(self, logits: Tensor) -> Tensor:
        return logits.float().softmax(dim=-1)  # (B, 5, 5) float32, also for bf16 logits

    def decode(self, logits: Tensor) -> Tensor:
        if self.decode_mode == "argmax":
            return self.bin_values[logits.argmax(dim=-1)]  # (B, 5)
        return self.proba(logits) @ self.bin_values  # (B, 5, 5) @ (5,) -> (B, 5)


class RegressionHead(nn.Module):
    """MLP (one linear layer when hidden=0) -> 5 sigmoid scores in [0, 1], or, `bounded=False`,
    unbounded values for z-scored labels; MSE over labelled entries."""

    def __init__(self, in_features: int, *, hidden: int, dropout: float, bounded: bool = True):
        super().__init__()
        self.bounded = bounded
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, N_TRAITS))
        else:
            self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, N_TRAITS))

    def forward(self, features: Tensor) -> Tensor:  # features (B, D)
        out = self.mlp(features)  # (B, 5)
        return torch.sigmoid(out) if self.bounded else out

    def loss(self, scores: Tensor, targets: Tensor) -> Tensor:
        valid = ~torch.isnan(targets)  # (B, 5)
        sq = (scores - targets.nan_to_num(0.0)) ** 2 * valid
        return sq.sum() / valid.sum().clamp_min(1)

    def proba(self, scores: Tensor) -> None:
        return None

    def decode(self, scores: Tensor) -> Tensor:
        return scores  # (B, 5)


def make_head(cfg: Any, in_features: int) -> nn.Module:
    """The head `cfg.head` names over `in_features` features (every model of the zoo uses it)."""
    if cfg.head == "classification":
        return ClassificationHead(in_features, hidden=cfg.hidden, dropout=cfg.dropout,
                                  decode=cfg.decode)
    return RegressionHead(in_features, hidden=cfg.hidden, dropout=cfg.dropout,
                          bounded=cfg.head == "regression")


def _normalise_images(_module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    """Forward pre-hook: a batch whose images are still the sources' uint8 is normalised here,
    given as `model(batch)` or `model(batch=batch)` (models.batching.to_device normalises the
    engine's batches before they arrive)."""
    if args and isinstance(args[0], Mapping):
        return (normalise_image_keys(args[0]), *args[1:]), kwargs
    if isinstance(kwargs.get("batch"), Mapping):
        return args, {**kwargs, "batch": normalise_image_keys(kwargs["batch"])}
    return None


class HeadModel(nn.Module):
    """The registry protocol's loss / decode / proba / predict, delegated to `self.head` (one of
    the heads above). Every model of the zoo derives from it and only defines forward. A batch's
    uint8 images (the sources' face / frame / face_seq) are ImageNet-normalised before forward."""

    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.register_forward_pre_hook(_normalise_images, with_kwargs=True)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """targets (B, 5), NaN = unlabelled (masked)."""
        return self.head.loss(outputs, targets)

    def decode(self, outputs: Tensor) -> Tensor:
        """(B, 5) scores from forward's outputs: in [0, 1] (the label scale for regression_z)."""
        return self.head.decode(outputs)

    def proba(self, outputs: Tensor) -> Tensor | None:
        """(B, 5, 5) per-bin probabilities (classification head), else None."""
        return self.head.proba(outputs)

    def predict(self, batch: Mapping[str, Tensor]) -> Tensor:
        """decode(forward(batch)): (B, 5). Call under torch.inference_mode() in eval."""
        return self.decode(self(batch))


class _AUModel(HeadModel):
    """The registry protocol for AU models: forward(batch) / loss / decode / predict."""

    inputs = ("aus", "aus_mask")
    config: Any
    head: nn.Module

    def features(self, aus: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Tensor] | Tensor, mask: Tensor | None = None) -> Tensor:
        """batch: {"aus": (B, T, 17), "aus_mask": (B, T)} (or the aus tensor and mask directly).
        Returns logits (B, 5, 5) (classification) or scores (B, 5) (regression)."""
        if isinstance(batch, Mapping):
            aus, mask = batch["aus"], batch.get("aus_mask")
        else:
            aus = batch
        aus, mask, lengths = prepare_inputs(aus, mask, n_aus=self.config.n_aus,
                                            seq_len=self.config.seq_len)
        return self.head(self.features(aus, mask, lengths))



# --------------------------------------------------------------------------------------------------
# multi-scale 1D-CNN


class _CNNBranch(nn.Module):
    def __init__(self, n_aus: int, channels: tuple[int, int], kernel: int, *, batch_norm: bool):
        super().__init__()
        self.block1 = _ConvBNReLU(n_aus, channels[0], kernel, batch_norm=batch_norm)
        self.block2 = _ConvBNReLU(channels[0], channels[1], kernel, batch_norm=batch_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, 17, T)
        h = self.block2(self.block1(x, mask), mask)  # (B, 128, T)
        return torch.cat([masked_mean(h, mask), masked_max(h, mask)], dim=1)  # (B, 256)


class PerfexCNN(_AUModel):
    """Four parallel conv branches (k = 3, 5, 7, 9), masked mean + max pooling, MLP head."""

    def __init__(self, config: PerfexCNNConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleList(
            _CNNBranch(config.n_aus, config.channels, k, batch_norm=config.batch_norm)
            for k in config.kernel_sizes)
        n_features = len(config.kernel_sizes) * 2 * config.channels[1]  # 4 x (mean, max) x 128
        self.head = make_head(config, n_features)

    def features(self, aus: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        x = aus.transpose(1, 2)  # (B, T, 17) -> (B, 17, T): Conv1d wants channels first
        return torch.cat([b(x, mask) for b in self.branches], dim=1)  # (B, 1024)


# --------------------------------------------------------------------------------------------------
# hybrid: SE-FCN beside an attention-LSTM


class AttentionLSTM(nn.Module):
    """batch_first LSTM over time, packed by length, additive attention over its real steps.

    x (B, T, F), mask (B, T), lengths (B,) on CPU -> context (B, hidden). `last_attention` keeps
    the (B, T) weights of the latest call for inspection.
    """

    def __init__(self, n_in: int, *, hidden: int, layers: int, attention_dim: int):
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(hidden, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)
        self.last_attention: Tensor | None = None

    def forward(self, x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        B, T, _ = x.shape
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H)
        e = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T, A) -> (B, T)
        e = e.masked_fill(~mask, float("-inf"))  # padding gets no weight
        alpha = e.softmax(dim=1)  # (B, T); every row has >= 1 real step (prepare_inputs)
        self.last_attention = alpha.detach()
        return torch.bmm(alpha.unsqueeze(1), h).squeeze(1)  # (B, 1, T) @ (B, T, H) -> (B, H)


class PerfexHybrid(_AUModel):
    """SE-FCN (convs 128/k8, 256/k5, 256/k3, 256/k3, BN + ReLU, SE after the first two, masked
    global average pooling) beside an attention-LSTM; features concatenated into the head."""

    def __init__(self, config: PerfexHybridConfig):
        super().__init__()
        self.config = config
        widths = (config.n_aus, *config.fcn_channels)
        self.convs = nn.ModuleList(
            _ConvBNReLU(widths[i], widths[i + 1], k, batch_norm=True)
            for i, k in enumerate(config.fcn_kernels))
        self.se = nn.ModuleList(SqueezeExcite(c, reduction=config.se_reduction)
                                for c in config.fcn_channels[:config.se_blocks])
        self.lstm_branch = AttentionLSTM(config.n_aus, hidden=config.lstm_hidden,
                                         layers=config.lstm_layers,
                                         attention_dim=config.attention_dim)
        self.lstm_dropout = nn.Dropout(config.lstm_dropout)
        self.head = make_head(config, config.fcn_channels[-1] + config.lstm_hidden)

    def fcn_features(self, aus: Tensor, mask: Tensor) -> Tensor:
        h = aus.transpose(1, 2)  # (B, T, 17) -> (B, 17, T)
        for i, conv in enumerate(self.convs):
            h = conv(h, mask)  # (B, C_i, T)
            if i < len(self.se):
                h = self.se[i](h, mask)  # padding stays 0: SE only rescales channels
        return masked_mean(h, mask)  # (B, 256)

    def features(self, aus: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        fcn = self.fcn_features(aus, mask)  # (B, 256)
        lstm = self.lstm_dropout(self.lstm_branch(aus, mask, lengths))  # (B, 128)
        return torch.cat([fcn, lstm], dim=1)  # (B, 384)


# --------------------------------------------------------------------------------------------------
# factories


@register("perfex_cnn", modality="au", inputs=("aus", "aus_mask"),
          source="PerFeX multi-scale 1D-CNN (1dcnn_train.py; published defects fixed)",
          card="Multi-scale 1D-CNN (k=3,5,7,9; 17->64->128) on AU sequences, masked mean+max "
               "pooling (PerFeX: average), no per-branch Dropout(0.5), head hidden 256 (PerFeX: "
               "128), 5-bin classification or [0,1] regression head")
def perfex_cnn(*, config: PerfexCNNConfig | None = None, **overrides: Any) -> PerfexCNN:
    """PerfexCNN from `config` (default PerfexCNNConfig()) with field `overrides`."""
    return PerfexCNN(make_config(PerfexCNNConfig, config, overrides, "perfex_cnn"))


@register("perfex_hybrid", modality="au", inputs=("aus", "aus_mask"),
          source="PerFeX hybrid SE-FCN + attention-LSTM (attn_train.py; published defects fixed)",
          card="SE-FCN (128/k8, 256/k5, 256/k3, 256/k3; BN on all, SE after 2; PerFeX: no BN, SE "
               "after 4) beside a packed LSTM-128 on the raw AUs with single-hop attention "
               "(PerFeX: AU + timestep embeddings, LSTM-256, 256-hop attention), 5-bin or [0,1] "
               "head")
def perfex_hybrid(*, config: PerfexHybridConfig | None = None, **overrides: Any) -> PerfexHybrid:
    """PerfexHybrid from `config` (default PerfexHybridConfig()) with field `overrides`."""
    return PerfexHybrid(make_config(PerfexHybridConfig, config, overrides, "perfex_hybrid"))
