"""Two-pathway and pyramid video models over a face clip: SlowFast (`slow_fast_face_seq`) and
TSN with a Temporal Pyramid Network neck (`tpn_face_seq`), after DeepPersonality's slow_fast.py
and TSN2D.py (its TSN3D.py is never imported or registered there: dead code).

    from models import build_model
    model = build_model("slow_fast_face_seq", alpha=2)
    scores = model.predict({"face_seq": x})     # x (B, T, 3, 64, 64) normalised -> (B, 5)
    model = build_model("tpn_face_seq", backbone="2d")   # "3d": TSN3D's 3D backbone

Input `face_seq` (B, T, 3, H, W) (models/data_image.py: `length` T consecutive crops by default).

SlowFast (Feichtenhofer et al. 2019): a Slow pathway sees every `alpha`-th frame with many
channels; a Fast pathway sees every frame with `1 / beta_inv` of the channels. Lateral
connections after the stem and after each stage but the last carry Fast features to Slow through
a time-strided conv (kernel `fusion_kernel` x 1 x 1, stride alpha, 2x the Fast channels) whose
output is concatenated to the Slow features. The Slow pathway's convs are purely spatial (temporal
kernel 1) in its first two stages and 3 x 3 x 3 after (the paper's res4, res5: temporal
convolution helps only once features are semantic); the Fast pathway's are 3 x 3 x 3 throughout.
Both are pooled globally and concatenated into the head. The paper's defaults (alpha 8, beta_inv
8, fusion kernel 5, 32-frame Fast clips) and DeepPersonality's (slow_fast.py: SlowFast-R50 with
alpha 4, beta_inv 8, fusion kernel 7, 64-frame Fast / 16-frame Slow clips at 224 px, dropout 0.5,
the output sigmoid only at evaluation) assume long clips; here alpha 2 on 6-frame clips gives
Slow 3 frames, one basic block per stage at width 8 (params.yaml).

TPN (Yang et al. 2020, "Temporal Pyramid Network for action recognition"), as DeepPersonality uses
it inside TSN: a backbone gives features of its last two stages (levels); each level goes through
spatial semantic modulation (3x3 convs, strided on the lower level, to one spatial size and
`neck_width` channels) and temporal rate modulation (a temporal conv and max pool by that level's
rate in `rates`); information flows top-down (a level adds the higher level's features resized to
its own time axis) and then bottom-up (a level adds the lower one's, pooled to its time axis); each
level is pooled globally and the levels are concatenated: the TSN segmental consensus is this
average over the clip. DeepPersonality's TSN2D differs: a ResNet-50 backbone with the temporal
shift module (TSM) on, temporal rates equal to the clip length (16: each level's time axis pooled
to one step), level- and pyramid-fusion convs to 2048 channels, the auxiliary head, 256 px frames,
a Linear without sigmoid; here no TSM, rates (1, 2), additions in place of fusion convs.
`backbone: 2d` is TSN2D's: a 2D ResNet per frame, stacked over time; `backbone: 3d` is TSN3D's: 3D
residual blocks (temporal kernel 3, time kept). The two differ only in the backbone, which the zoo
has already on its own (`cnn_lstm_face_seq`'s per-frame ResNet, `r3d_face_seq`), so they are one
model with a switch; `3d` follows TSN3D.py, which DeepPersonality never runs. Not re-implemented:
TPN's auxiliary deep-supervision head (a training-time regulariser).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register
from models.resnet_blocks import BasicBlock
from models.visual import (HeadFields, ResNetTrunk, ZooModel, check_head, finish, make_config,
                           make_head, seq_input)

__all__ = ["SlowFastConfig", "SlowFast", "TPNConfig", "TPNModel", "Block3DT"]


def _conv3d_bn(c_in: int, c_out: int, kernel: tuple[int, int, int],
               stride: tuple[int, int, int] = (1, 1, 1), relu: bool = True) -> nn.Sequential:
    mods = [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=tuple(k // 2 for k in kernel),
                      bias=False), nn.BatchNorm3d(c_out)]
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class Block3DT(nn.Module):
    """3D basic residual block that keeps time: (t_kernel x 3 x 3) conv with spatial stride, then
    (t_kernel x 3 x 3). (B, C_in, T, H, W) -> (B, C_out, T, H / stride, W / stride)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, t_kernel: int = 3):
        super().__init__()
        self.conv1 = _conv3d_bn(c_in, c_out, (t_kernel, 3, 3), (1, stride, stride))
        self.conv2 = _conv3d_bn(c_out, c_out, (t_kernel, 3, 3), relu=False)
        self.down = None if stride == 1 and c_in == c_out else \
            _conv3d_bn(c_in, c_out, (1, 1, 1), (1, stride, stride), relu=False)

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.down is None else self.down(x)
        return F.relu(self.conv2(self.conv1(x)) + idt)


def _stage(c_in: int, c_out: int, n: int, *, stride: int, t_kernel: int) -> nn.Sequential:
    return nn.Sequential(*[Block3DT(c_in if i == 0 else c_out, c_out, stride=stride if i == 0
                                    else 1, t_kernel=t_kernel) for i in range(n)])


def _stem(width: int, t_kernel: int) -> nn.Sequential:
    """(t x 7 x 7) conv stride (1, 2, 2) + (1 x 3 x 3) max pool stride (1, 2, 2): H, W / 4."""
    return nn.Sequential(_conv3d_bn(3, width, (t_kernel, 7, 7), (1, 2, 2)),
                         nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))


# --------------------------------------------------------------------------------------------------
# SlowFast


@dataclasses.dataclass
class SlowFastConfig(HeadFields):
    width: int = 16  # Slow stem channels; stage s: width * 2^s (SlowFast-R50: 64, bottlenecks)
    beta_inv: int = 4  # Fast channels = Slow channels / beta_inv (paper and DP: 8)
    alpha: int = 2  # Slow sees every alpha-th frame (paper: 8 on 32-frame clips; DP: 4 on 64)
    layers: tuple[int, ...] = (1, 1, 1, 1)  # blocks per stage (ResNet-18-like: 2, 2, 2, 2)
    slow_temporal_from: int = 2  # Slow stages from this index (0-based) use temporal kernel 3
    fusion_kernel: int = 5  # Fast -> Slow lateral conv: temporal kernel (paper: 5; DP: 7)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_head(self, "slow_fast_face_seq")
        if self.width < self.beta_inv or self.beta_inv < 1 or self.alpha < 1 or \
                not self.layers or any(n < 1 for n in self.layers) or self.fusion_kernel < 1 or \
                self.fusion_kernel % 2 == 0:
            raise ValueError("slow_fast_face_seq: width >= beta_inv >= 1, alpha >= 1, positive "
                             "layers, an odd fusion_kernel")


class SlowFast(ZooModel):
    """Slow and Fast 3D ResNet pathways with Fast -> Slow lateral connections (see the docstring
    of the module)."""

    inputs = ("face_seq",)
    # predict's Grad-CAM (models/explain.py) adds the last map of each pathway: both reach the
    # head, so the last map of all (a lateral conv into Slow, or the Fast stage) misses one
    cam_pathways = ("slow", "fast")

    def __init__(self, config: SlowFastConfig):
        super().__init__()
        self.config = config
        w, wf, a = config.width, config.width // config.beta_inv, config.alpha
        self.slow_stem, self.fast_stem = _stem(w, 1), _stem(wf, 5)
        self.slow, self.fast, self.lateral = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c_slow, c_fast = w, wf
        for i, n in enumerate(config.layers):
            # the lateral before stage i brings 2 * c_fast channels to Slow
            self.lateral.append(_conv3d_bn(c_fast, 2 * c_fast, (config.fusion_kernel, 1, 1),
                                           (a, 1, 1)))
            stride = 1 if i == 0 else 2
            t_slow = 3 if i >= config.slow_temporal_from else 1
            self.slow.append(_stage(c_slow + 2 * c_fast, w * 2 ** i, n, stride=stride,
                                    t_kernel=t_slow))
            self.fast.append(_stage(c_fast, wf * 2 ** i, n, stride=stride, t_kernel=3))
            c_slow, c_fast = w * 2 ** i, wf * 2 ** i
        self.out_features = c_slow + c_fast
        self.head = make_head(config, self.out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = seq_input(batch).transpose(1, 2)  # (B, T, 3, H, W) -> (B, 3, T, H, W)
        slow = self.slow_stem(x[:, :, ::self.config.alpha])  # (B, w, ceil(T / alpha), H/4, W/4)
        fast = self.fast_stem(x)  # (B, w / beta_inv, T, H/4, W/4)
        for lateral, slow_stage, fast_stage in zip(self.lateral, self.slow, self.fast):
            # time-strided conv: T -> floor((T - 1) / alpha) + 1 = ceil(T / alpha), Slow's length
            slow = torch.cat([slow, lateral(fast)], dim=1)  # (B, C_s + 2 C_f, T_s, h, w)
            slow, fast = slow_stage(slow), fast_stage(fast)
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)  # (B, D)


@register("slow_fast_face_seq", modality="visual", inputs=("face_seq",), source="after "
          "DeepPersonality's SlowFast-R50 (slow_fast.py; Feichtenhofer et al. 2019)",
          card="SlowFast after DeepPersonality's (Feichtenhofer et al. 2019): a Slow (every "
               "alpha-th frame, wide) and a Fast (every frame, thin) 3D ResNet pathway with "
               "Fast-to-Slow laterals, on a 6-frame face clip (DP: R50, alpha 4, 64 frames)")
def slow_fast_face_seq(*, config: SlowFastConfig | None = None, **overrides: Any) -> SlowFast:
    return finish(SlowFast(make_config(SlowFastConfig, config, overrides, "slow_fast_face_seq")))


# --------------------------------------------------------------------------------------------------
# TSN + TPN


@dataclasses.dataclass
class TPNConfig(HeadFields):
    backbone: Literal["2d", "3d"] = "2d"  # TSN2D (per-frame 2D ResNet) or TSN3D (3D blocks)
    width: int = 8  # backbone stem channels; stage s: width * 2^s
    layers: tuple[int, ...] = (1, 1, 1, 1)  # backbone blocks per stage; the last two are levels
    neck_width: int = 32  # channels of every pyramid level after spatial modulation
    rates: tuple[int, int] = (1, 2)  # temporal max-pool rate of the (lower, top) level

    def __post_init__(self) -> None:
        self.layers, self.rates = tuple(self.layers), tuple(self.rates)
        check_head(self, "tpn_face_seq")
        if self.backbone not in ("2d", "3d") or len(self.layers) < 2 or \
                any(n < 1 for n in self.layers) or self.width < 1 or self.neck_width < 1 or \
                len(self.rates) != 2 or any(r < 1 for r in self.rates):
            raise ValueError("tpn_face_seq: backbone 2d|3d, >= 2 positive layers, width and "
                             "neck_width >= 1, two rates >= 1")


class _Backbone3D(nn.Module):
    """TSN3D's backbone: stem + 3D residual stages that keep time. Returns every stage's output
    (B, C_s, T, H_s, W_s)."""

    def __init__(self, width: int, layers: Sequence[int]):
        super().__init__()
        self.stem = _stem(width, 3)
        self.stages = nn.ModuleList(_stage(width * 2 ** max(i - 1, 0), width * 2 ** i, n,
                                           stride=1 if i == 0 else 2, t_kernel=3)
                                    for i, n in enumerate(layers))

    def forward(self, x: Tensor) -> list[Tensor]:  # x (B, 3, T, H, W)
        outs, h = [], self.stem(x)
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs


class _Backbone2D(nn.Module):
    """TSN2D's backbone: one 2D ResNet over every frame, each stage's maps stacked over time."""

    def __init__(self, width: int, layers: Sequence[int]):
        super().__init__()
        self.trunk = ResNetTrunk(BasicBlock, layers, width=width)

    def forward(self, x: Tensor) -> list[Tensor]:  # x (B, 3, T, H, W)
        B, T = x.shape[0], x.shape[2]
        h = self.trunk.stem(x.transpose(1, 2).flatten(0, 1))  # (B*T, 3, H, W) -> (B*T, w, H/4, W/4)
        outs = []
        for stage in self.trunk.stages:
            h = stage(h)  # (B*T, C, h, w)
            outs.append(h.view(B, T, *h.shape[1:]).transpose(1, 2))  # (B, C, T, h, w)
        return outs


class TPNModel(ZooModel):
    """TSN with a two-level Temporal Pyramid Network neck (see the docstring of the module)."""

    inputs = ("face_seq",)

    def __init__(self, config: TPNConfig):
        super().__init__()
        self.config = config
        w, n, d = config.width, len(config.layers), config.neck_width
        maker = _Backbone2D if config.backbone == "2d" else _Backbone3D
        self.backbone = maker(w, config.layers)
        c_low, c_top = w * 2 ** (n - 2), w * 2 ** (n - 1)
        # spatial semantic modulation: the lower level is strided to the top level's size
        self.spatial = nn.ModuleList([_conv3d_bn(c_low, d, (1, 3, 3), (1, 2, 2)),
                                      _conv3d_bn(c_top, d, (1, 3, 3))])
        # temporal rate modulation: a temporal conv, then max pool by the level's rate
        self.temporal = nn.ModuleList([_conv3d_bn(d, d, (3, 1, 1)) for _ in range(2)])
        self.out_features = 2 * d
        self.head = make_head(config, self.out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = seq_input(batch).transpose(1, 2)  # (B, T, 3, H, W) -> (B, 3, T, H, W)
        low, top = self.backbone(x)[-2:]  # (B, C_l, T, h, w), (B, C_t, T, h/2, w/2)
        levels = []
        for feat, spatial, temporal, rate in zip((low, top), self.spatial, self.temporal,
                                                 self.config.rates):
            h = temporal(spatial(feat))  # (B, d, T, h/2, w/2)
            if rate > 1:
                h = F.max_pool3d(h, (rate, 1, 1), (rate, 1, 1), ceil_mode=True)  # (B, d, T/r, ..)
            levels.append(h)
        low, top = levels
        low = low + F.interpolate(top, size=low.shape[2:], mode="nearest")  # top-down flow
        top = top + F.adaptive_max_pool3d(low, top.shape[2:])  # bottom-up flow
        return torch.cat([low.mean(dim=(2, 3, 4)), top.mean(dim=(2, 3, 4))], dim=1)  # (B, 2d)


@register("tpn_face_seq", modality="visual", inputs=("face_seq",), source="after "
          "DeepPersonality's TSN2D with TPN (TSN2D.py; Yang et al. 2020)",
          card="TSN with a Temporal Pyramid Network neck (Yang et al. 2020): two backbone levels, "
               "spatial and temporal-rate modulation, top-down and bottom-up flow, on a face clip "
               "(backbone 2d | 3d; DP's TSN2D: ResNet-50 with TSM, fusion convs, no sigmoid)")
def tpn_face_seq(*, config: TPNConfig | None = None, **overrides: Any) -> TPNModel:
    return finish(TPNModel(make_config(TPNConfig, config, overrides, "tpn_face_seq")))
