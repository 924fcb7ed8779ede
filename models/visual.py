"""Visual models on aligned face crops, full frames and face sequences, after DeepPersonality's.

    from models import build_model
    model = build_model("resnet18_face", width=16)          # config fields as keyword arguments
    scores = model.predict({"face": x})                     # x (B, 3, 112, 112) normalised -> (B, 5)

Inputs (models/data_image.py builds them): `face` / `frame` (B, 3, H, W) float, ImageNet-normalised;
`face_seq` (B, T, 3, H, W). Every model here trains from scratch (no weights are downloaded);
`weights="path.pt"` in the config loads a user-provided state dict (torch.load(weights_only=True);
`weights_strict=False` tolerates missing / unexpected keys, e.g. another head).

Heads (`head=` in every config): "regression" (5 sigmoid scores in [0, 1], masked MSE; the
RegressionHead of models/perfex.py: PerFeX's own code only classifies), "classification" (5 traits
x 5 bins, PerFeX's ClassificationHead, decoded to [0, 1])
and "regression_z" (5 unbounded outputs, masked MSE: for `label_scale` z-scored labels such as
UDIVA's; `decode` then returns the label scale, not [0, 1]).

Shared pieces used by models/audio.py and models/audiovisual.py live here too: the config helper,
the heads, the `ZooModel` protocol base class and the 2D ResNet trunk.

How far each is from the DeepPersonality network it names (docs/models.md, "Against
DeepPersonality: what differs", has the table): DeepPersonality's only plain-ResNet image model is
the VisualResNet18 of audio_visual_residual.py (ResNet-18 layout at widths 32-256 on full frames,
one Linear + sigmoid), beside an SE-ResNet-50 (se_net.py); resnet34_face and resnet50_face have no
counterpart there. hrnet_face is a three-branch HRNet-like net of ~60k parameters (width 8), not
HRNet-W18-C (~19.3M). dan_* pool globally (this module's reading of Wei et al.), where
DeepPersonality's DAN pools to 7x7 (VGG-16-BN, 50,176 features). vat_face_seq and cnn_lstm_face_seq
keep the idea of VAT and of the CNN-LSTM, not their layers; r3d_face_seq is torchvision's r3d_18
layout, where DeepPersonality uses a 3D-ResNet-50. Every zoo head is an MLP (hidden 128) ending in
a sigmoid where DeepPersonality's are mostly one Linear.

One file because the visual families share the ZooModel base, the trunk blocks and the
config helpers; each family is a section of its own (ResNet, HRNet, DAN, face sequences).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.perfex import HeadModel, make_config, make_head
from models.registry import register
from models.resnet_blocks import BasicBlock, Bottleneck

__all__ = ["ZooModel", "make_config", "make_head", "ResNetTrunk", "SEBasicBlock",
           "ResNetConfig", "HRNetConfig", "DANConfig", "ClipTransformerConfig", "CNNLSTMConfig",
           "R3DConfig", "finish"]

N_TRAITS = 5
HeadKind = Literal["regression", "classification", "regression_z"]


# --------------------------------------------------------------------------------------------------
# config helpers and heads (shared by the whole zoo)


@dataclasses.dataclass
class HeadFields:
    """Fields every zoo config has (nanoGPT style: flat, commented defaults)."""
    head: HeadKind = "regression"
    hidden: int = 128  # head MLP width (0: a single linear layer)
    dropout: float = 0.3  # in the head
    decode: Literal["expectation", "argmax"] = "expectation"  # classification head only
    weights: str = ""  # a user-provided state dict (.pt) loaded after building; "" = from scratch
    weights_strict: bool = True  # load_state_dict(strict=...)


def check_head(cfg: Any, name: str) -> None:
    if cfg.head not in ("regression", "classification", "regression_z"):
        raise ValueError(f"{name}: head must be 'regression', 'classification' or 'regression_z', "
                         f"got {cfg.head!r}")
    if cfg.hidden < 0 or (cfg.head == "classification" and cfg.hidden < 1):
        raise ValueError(f"{name}: hidden must be >= 0 (>= 1 for the classification head)")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.decode not in ("expectation", "argmax"):
        raise ValueError(f"{name}: decode must be 'expectation' or 'argmax', got {cfg.decode!r}")


class ZooModel(HeadModel):
    """The registry protocol: forward(batch) -> head outputs; loss / decode / proba / predict.

    Subclasses set `inputs` (the sample keys read) and implement `features(batch) -> (B, D)`.
    """

    inputs: tuple[str, ...] = ()
    config: Any
    head: nn.Module

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch keys {list(self.inputs)}; "
                           f"missing {missing}")
        return self.head(self.features(batch))

    def min_lengths(self) -> dict[str, int]:
        """{input key: the fewest steps along its time axis the network takes (models/
        inference.py, TIME_AXIS)}, for the inputs whose length follows the clip's or the
        source's config (log-mel, wave, a face clip); {} when none. Inference pads a shorter
        log-mel or wave up to it instead of failing inside a pooling layer and refuses a shorter
        face clip; train refuses a training view under it before it reads any data."""
        return {}

    def max_lengths(self) -> dict[str, int]:
        """{input key: the most steps along its time axis the network takes} (vat_face_seq's
        learned positions: `max_len` frames); {} when none. Train refuses a training view over
        it before it reads any data (models/train_params.py); evaluation's views are as long."""
        return {}


def finish(model: ZooModel) -> ZooModel:
    """Load config.weights when given. Every factory ends with this."""
    if model.config.weights:
        from models.engine import load_weights  # our checkpoints or bare state dicts

        load_weights(model, model.config.weights, strict=model.config.weights_strict)
    return model


def image_input(batch: Mapping[str, Tensor], key: str) -> Tensor:
    x = batch[key]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"batch[{key!r}] must be (B, 3, H, W), got {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------------
# ResNet family (torchvision's layout, models/resnet_blocks.py; width and depth configurable)


class SEBasicBlock(BasicBlock):
    """The BasicBlock with squeeze-excitation on the residual branch (Hu et al. 2018)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, reduction: int = 16):
        super().__init__(inplanes, planes, stride, downsample)
        inner = max(4, planes // reduction)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(planes, inner, 1),
                                nn.ReLU(inplace=True), nn.Conv2d(inner, planes, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, H', W')
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out * self.se(out)  # (B, C, H', W') * (B, C, 1, 1)
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without its fc: stem (7x7/2 + maxpool), four stages of `layers` blocks
    at widths width * (1, 2, 4, 8), global average pool. width=64 with BasicBlock (2, 2, 2, 2) is
    exactly resnet18's trunk (tests check the parameter count). x (B, C, H, W) -> (B, out_features).
    """

    def __init__(self, block: type, layers: Sequence[int], *, width: int = 64, in_channels: int = 3,
                 stem_stride: int = 2, stem_pool: bool = True):
        super().__init__()
        self.inplanes = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=stem_stride, padding=3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1) if stem_pool else nn.Identity())
        stages = []
        for i, n in enumerate(layers):
            stages.append(self._make_layer(block, width * 2 ** i, n, stride=1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.out_features = width * 2 ** (len(layers) - 1) * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_map(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C', H/32, W/32)
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3))  # (B, C', h, w) -> (B, C')


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "se_basic": SEBasicBlock}
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


@dataclasses.dataclass
class ResNetConfig(HeadFields):
    input_key: Literal["face", "frame"] = "face"  # set by the registered name
    depth: int = 18  # 18 | 34 | 50: torchvision's block type and layer counts
    layers: tuple[int, ...] = ()  # override the layer counts (e.g. (1, 1, 1, 1) for a tiny net)
    width: int = 32  # stem / first stage channels (torchvision: 64); stages width * 1, 2, 4, 8
    se: bool = False  # squeeze-excitation in every BasicBlock (SE-ResNet-18/34; DP: SE-ResNet-50)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_head(self, "resnet")
        if self.depth not in DEPTHS:
            raise ValueError(f"resnet: depth must be one of {sorted(DEPTHS)}, got {self.depth}")
        if self.width < 1 or any(n < 1 for n in self.layers):
            raise ValueError("resnet: width and layers must be positive")
        if self.se and self.depth == 50:
            raise ValueError("resnet: se=True is for BasicBlock depths (18, 34)")


class ResNetModel(ZooModel):
    """ResNet-18/34/50 (or SE-ResNet) on one image per sample, global average pool, head."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        self.inputs = (config.input_key,)
        kind, layers = DEPTHS[config.depth]
        block = BLOCKS["se_basic" if config.se else kind]
        self.trunk = ResNetTrunk(block, config.layers or layers, width=config.width)
        self.head = make_head(config, self.trunk.out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.trunk(image_input(batch, self.config.input_key))  # (B, 3, H, W) -> (B, D)


def _fixed(name: str, overrides: dict, **fixed: Any) -> dict:
    """`overrides` with the fields the registered name fixes. Asking another value of one is a
    ValueError: it would be dropped unseen (train.model_config.resnet18_face.depth: 34 trained a
    ResNet-18, dan_frame's input_key: face read frames); the model's own value is taken."""
    for key, value in fixed.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{name}: {key} is {value!r} for this model, got "
                             f"{overrides[key]!r} (another {key} is another registered model: "
                             "`python -m models` lists them)")
    return {**overrides, **fixed}


def _resnet(name: str, config: ResNetConfig | None, overrides: dict, **fixed: Any) -> ResNetModel:
    cfg = make_config(ResNetConfig, config, _fixed(name, overrides, **fixed), name)
    return finish(ResNetModel(cfg))


@register("resnet18_face", modality="visual", inputs=("face",), source="torchvision ResNet-18 (He "
          "et al. 2016); DeepPersonality's only plain-ResNet image model is VisualResNet18 "
          "(audio_visual_residual.py: widths 32-256, full frames)",
          card="ResNet-18 (torchvision blocks, width configurable) on one aligned face crop per "
               "step, MLP head, views averaged at eval; DP's VisualResNet18 reads full frames")
def resnet18_face(*, config: ResNetConfig | None = None, **overrides: Any) -> ResNetModel:
    return _resnet("resnet18_face", config, overrides, input_key="face", depth=18)


@register("resnet34_face", modality="visual", inputs=("face",), source="torchvision ResNet-34 (He "
          "et al. 2016); no DeepPersonality counterpart", card="ResNet-34 on aligned face crops "
          "(DeepPersonality has no ResNet-34 image model; its CR-Net uses ResNet-34 trunks)")
def resnet34_face(*, config: ResNetConfig | None = None, **overrides: Any) -> ResNetModel:
    return _resnet("resnet34_face", config, overrides, input_key="face", depth=34)


@register("resnet50_face", modality="visual", inputs=("face",), source="torchvision ResNet-50 (He "
          "et al. 2016); no DeepPersonality counterpart", card="ResNet-50 (bottleneck blocks) on "
          "aligned face crops (DeepPersonality has no plain ResNet-50 image model)")
def resnet50_face(*, config: ResNetConfig | None = None, **overrides: Any) -> ResNetModel:
    return _resnet("resnet50_face", config, overrides, input_key="face", depth=50)


@register("resnet18_frame", modality="visual", inputs=("frame",), source="after DeepPersonality's "
          "VisualResNet18 (audio_visual_residual.py; He et al. 2016)", card="ResNet-18 on full "
          "frames as DP's VisualResNet18 (widths 32-256, 224 px, one Linear + sigmoid); here width "
          "configurable, 64 px, MLP head")
def resnet18_frame(*, config: ResNetConfig | None = None, **overrides: Any) -> ResNetModel:
    return _resnet("resnet18_frame", config, overrides, input_key="frame", depth=18)


@register("seresnet18_face", modality="visual", inputs=("face",), source="after DeepPersonality's "
          "SE-ResNet-50 (se_net.py; Hu et al. 2018)", card="SE-ResNet-18: squeeze-excitation in "
          "every basic block, on face crops (DP: SE-ResNet-50, bottleneck blocks, one Linear)")
def seresnet18_face(*, config: ResNetConfig | None = None, **overrides: Any) -> ResNetModel:
    return _resnet("seresnet18_face", config, overrides, input_key="face", se=True)


# --------------------------------------------------------------------------------------------------
# HRNet-like: parallel multi-resolution branches with repeated exchange (far smaller than the
# HRNet-W18-C of DeepPersonality's hr_net_cls.py)


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    mods = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out)]
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class HRExchange(nn.Module):
    """HRNet's fusion: output i = relu(sum_j f_ij(x_j)); j == i: identity; j > i (lower
    resolution): 1x1 conv + nearest upsampling; j < i: (i - j) strided 3x3 convs. xs[j] is
    (B, widths[j], H / 2^j, W / 2^j); output i is (B, out_widths[i], H / 2^i, W / 2^i)."""

    def __init__(self, widths: Sequence[int], out_widths: Sequence[int]):
        super().__init__()
        self.fuse = nn.ModuleList()
        for i, ci in enumerate(out_widths):
            row = nn.ModuleList()
            for j, cj in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(_conv_bn(cj, ci, k=1, relu=False))
                else:
                    steps = [_conv_bn(cj, cj, stride=2) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(cj, ci, stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        outs = []
        for i, row in enumerate(self.fuse):
            acc = None
            for j, (f, x) in enumerate(zip(row, xs)):
                y = f(x)
                if j > i:  # lower resolution: up to branch i's size
                    y = F.interpolate(y, size=xs[i].shape[-2:], mode="nearest")
                acc = y if acc is None else acc + y
            outs.append(F.relu(acc))
        return outs


@dataclasses.dataclass
class HRNetConfig(HeadFields):
    width: int = 16  # channels of the highest-resolution branch (HRNet-W18: 18)
    n_branches: int = 3  # parallel resolutions: /4, /8, /16 (, /32) (HRNet-W18-C: 4)
    blocks: int = 1  # BasicBlocks per branch per stage (HRNet-W18-C: 4, in 1 / 4 / 3 modules)

    def __post_init__(self) -> None:
        check_head(self, "hrnet_face")
        if not 2 <= self.n_branches <= 4 or self.width < 1 or self.blocks < 1:
            raise ValueError("hrnet_face: n_branches in 2..4, width and blocks >= 1")


class HRNetModel(ZooModel):
    """Stem to 1/4, then stages s = 2..n_branches: each adds a branch at half resolution (via the
    exchange), runs `blocks` BasicBlocks per branch and exchanges; the classification head pools
    every branch and concatenates (HRNet-V2-style representation head).

    Against DeepPersonality's HRNet-W18-C (hr_net_cls.py, ~19.3M parameters): no bottleneck
    layer1, 3 branches instead of 4 (18 / 36 / 72 / 144 there), one block per branch instead of 4,
    one exchange per stage instead of 1 / 4 / 3 modules, and each branch mean-pooled into the MLP
    head instead of W18-C's incremental bottlenecks, strided fusion and 1x1 conv to 2048 into one
    Linear + sigmoid. At width 8 it has ~60k parameters."""

    inputs = ("face",)

    @property
    def cam_pathways(self) -> tuple[str, ...]:
        """The last stage's branches (models/explain.py): the head pools every branch, so every
        path from the image to a score crosses one of them; the last map of all is one
        branch's (the coarsest), which left 60% of O's signal out on a trained model."""
        return tuple(f"stages.{self.config.n_branches - 1}.{i}"
                     for i in range(self.config.n_branches))

    def __init__(self, config: HRNetConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(_conv_bn(3, w, stride=2), _conv_bn(w, w, stride=2))  # -> 1/4
        self.stages = nn.ModuleList()
        self.exchanges = nn.ModuleList()
        for s in range(1, config.n_branches + 1):
            widths = [w * 2 ** i for i in range(s)]
            self.stages.append(nn.ModuleList(
                nn.Sequential(*[BasicBlock(c, c) for _ in range(config.blocks)]) for c in widths))
            out_widths = [w * 2 ** i for i in range(min(s + 1, config.n_branches))]
            self.exchanges.append(HRExchange(widths, out_widths))
        self.out_features = sum(w * 2 ** i for i in range(config.n_branches))
        self.head = make_head(config, self.out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        xs = [self.stem(image_input(batch, "face"))]  # [(B, w, H/4, W/4)]
        for blocks, exchange in zip(self.stages, self.exchanges):
            xs = [b(x) for b, x in zip(blocks, xs)]  # branch i: (B, w 2^i, H/2^(i+2), W/2^(i+2))
            xs = exchange(xs)  # adds the next (lower) resolution until n_branches
        return torch.cat([x.mean(dim=(2, 3)) for x in xs], dim=1)  # (B, sum_i w 2^i)


@register("hrnet_face", modality="visual", inputs=("face",), source="HRNet-like, after "
          "DeepPersonality's HRNet-W18-C (hr_net_cls.py; Wang et al. 2020)", card="HRNet-like, "
          "not HRNet-W18-C: 3 branches, 1 block per branch and 1 exchange per stage, branches "
          "pooled into an MLP head (~60k params at width 8; W18-C: 4 branches, ~19.3M), on face "
          "crops")
def hrnet_face(*, config: HRNetConfig | None = None, **overrides: Any) -> HRNetModel:
    return finish(HRNetModel(make_config(HRNetConfig, config, overrides, "hrnet_face")))


# --------------------------------------------------------------------------------------------------
# DAN: VGG-style descriptors, average and max pooled, concatenated


@dataclasses.dataclass
class DANConfig(HeadFields):
    input_key: Literal["face", "frame"] = "frame"  # set by the registered name
    widths: tuple[int, ...] = (16, 32, 64, 128)  # VGG stages (VGG-16: 64, 128, 256, 512, 512)
    convs: int = 2  # 3x3 conv + BN + ReLU per stage, then 2x2 max pool (VGG-16-BN: 2, 2, 3, 3, 3)
    l2_normalise: bool = True  # L2-normalise each pooled descriptor before concatenating (DAN)

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        check_head(self, "dan")
        if not self.widths or any(c < 1 for c in self.widths) or self.convs < 1:
            raise ValueError("dan: widths and convs must be positive")


class DANModel(ZooModel):
    """Descriptor Aggregation Network (Wei et al. 2016, ChaLearn 2016 winner): VGG conv
    descriptors, global average and global max pooling, each L2-normalised, concatenated.

    Global pooling as above, not DeepPersonality's DAN (dan.py): that one has the 13 convs of
    VGG-16-BN, pools adaptively to 7 x 7 (average and max), L2-normalises each position's channel
    vector and flattens them into 50,176 features, then Linear 1024, LeakyReLU, Dropout 0.5,
    Linear, sigmoid. Here 4 stages of 2 convs (8 convs), global pooling (2C features) and the zoo's
    MLP head."""

    def __init__(self, config: DANConfig):
        super().__init__()
        self.config = config
        self.inputs = (config.input_key,)
        layers, c_in = [], 3
        for c in config.widths:
            for _ in range(config.convs):
                layers.append(_conv_bn(c_in, c))
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = make_head(config, 2 * config.widths[-1])

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        h = self.body(image_input(batch, self.config.input_key))  # (B, C, H / 2^s, W / 2^s)
        avg, mx = h.mean(dim=(2, 3)), h.amax(dim=(2, 3))  # (B, C) each
        if self.config.l2_normalise:
            avg, mx = F.normalize(avg, dim=1), F.normalize(mx, dim=1)
        return torch.cat([avg, mx], dim=1)  # (B, 2C)


@register("dan_frame", modality="visual", inputs=("frame",), source="DAN (Wei et al. 2016), after "
          "DeepPersonality's DAN (dan.py)", card="DAN-style: 8 VGG-style convs, global "
          "average + max pooling, each L2-normalised, concatenated, on full frames (DP: VGG-16-BN, "
          "7x7 pools, 50,176 features)")
def dan_frame(*, config: DANConfig | None = None, **overrides: Any) -> DANModel:
    return finish(DANModel(make_config(DANConfig, config,
                                       _fixed("dan_frame", overrides, input_key="frame"),
                                       "dan_frame")))


@register("dan_face", modality="visual", inputs=("face",), source="DAN (Wei et al. 2016), after "
          "DeepPersonality's DAN (dan.py)", card="DAN-style (8 convs, global pooling) on "
          "aligned face crops (DP's DAN: VGG-16-BN, 7x7 pools, full frames)")
def dan_face(*, config: DANConfig | None = None, **overrides: Any) -> DANModel:
    return finish(DANModel(make_config(DANConfig, config,
                                       _fixed("dan_face", overrides, input_key="face"),
                                       "dan_face")))


# --------------------------------------------------------------------------------------------------
# temporal models over face sequences


def seq_input(batch: Mapping[str, Tensor], key: str = "face_seq") -> Tensor:
    x = batch[key]
    if x.dim() != 5 or x.shape[2] != 3:
        raise ValueError(f"batch[{key!r}] must be (B, T, 3, H, W), got {tuple(x.shape)}")
    return x


class FrameEncoder(nn.Module):
    """A small per-frame ResNet trunk shared over time: (B, T, 3, H, W) -> (B, T, D)."""

    def __init__(self, *, width: int, layers: Sequence[int]):
        super().__init__()
        self.trunk = ResNetTrunk(BasicBlock, layers, width=width)
        self.out_features = self.trunk.out_features

    def forward(self, x: Tensor) -> Tensor:
        B, T = x.shape[:2]
        f = self.trunk(x.flatten(0, 1))  # (B, T, 3, H, W) -> (B*T, 3, H, W) -> (B*T, D)
        return f.view(B, T, -1)  # (B, T, D)


@dataclasses.dataclass
class ClipTransformerConfig(HeadFields):
    width: int = 16  # per-frame ResNet trunk width
    layers: tuple[int, ...] = (1, 1, 1, 1)  # its BasicBlocks per stage
    d_model: int = 128  # transformer width
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 64  # longest clip (learned positional embeddings)
    attn_dropout: float = 0.1

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_head(self, "vat_face_seq")
        if self.d_model % self.n_heads:
            raise ValueError("vat_face_seq: d_model must be a multiple of n_heads")


class ClipTransformer(ZooModel):
    """VAT-like: a per-frame CNN makes one token per frame; a [CLS] token plus learned positions go
    through a transformer encoder; the [CLS] output feeds the head.

    Not DeepPersonality's VAT (video_action_transformer.py): there a ResNet-50 gives 2048 x 7 x 4
    maps per frame (224 x 112 px, 16 frames), a sinusoidal position code is added, a 7 x 4 conv
    makes 1024-d tokens, the middle frame's token is the query that cross-attends to all frames in
    16 independent heads of 3 layers each, the result is L2-normalised into one Linear without
    sigmoid; DP loads ImageNet weights for the ResNet-50 and then re-initialises the whole net."""

    inputs = ("face_seq",)

    def __init__(self, config: ClipTransformerConfig):
        super().__init__()
        self.config = config
        self.encoder = FrameEncoder(width=config.width, layers=config.layers)
        self.proj = nn.Linear(self.encoder.out_features, config.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.pos = nn.Parameter(torch.randn(1, config.max_len + 1, config.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, 2 * config.d_model,
                                           dropout=config.attn_dropout, batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = make_head(config, config.d_model)

    def max_lengths(self) -> dict[str, int]:
        return {"face_seq": self.config.max_len}  # a learned position per frame

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = seq_input(batch)  # (B, T, 3, H, W)
        B, T = x.shape[:2]
        if T > self.config.max_len:
            raise ValueError(f"vat_face_seq: clip of {T} frames > max_len {self.config.max_len}")
        tok = self.proj(self.encoder(x))  # (B, T, D_cnn) -> (B, T, d)
        tok = torch.cat([self.cls.expand(B, -1, -1), tok], dim=1) + self.pos[:, :T + 1]  # (B, T+1, d)
        return self.norm(self.transformer(tok)[:, 0])  # (B, d)


@register("vat_face_seq", modality="visual", inputs=("face_seq",), source="after "
          "DeepPersonality's VAT (video_action_transformer.py; Girdhar et al. 2019)",
          card="Clip transformer, not VAT's layers: per-frame small-ResNet tokens + [CLS] "
               "through a self-attention encoder over a face clip (DP: ResNet-50 maps, "
               "middle-frame query cross-attending, 16 heads x 3 layers, no sigmoid)")
def vat_face_seq(*, config: ClipTransformerConfig | None = None, **overrides: Any
                 ) -> ClipTransformer:
    return finish(ClipTransformer(make_config(ClipTransformerConfig, config, overrides,
                                              "vat_face_seq")))


@dataclasses.dataclass
class CNNLSTMConfig(HeadFields):
    width: int = 16  # per-frame ResNet trunk width
    layers: tuple[int, ...] = (1, 1, 1, 1)
    lstm_hidden: int = 128
    lstm_layers: int = 1
    bidirectional: bool = False

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_head(self, "cnn_lstm_face_seq")


class CNNLSTM(ZooModel):
    """Per-frame CNN, LSTM over the clip, mean of its outputs over time into the head.

    params.yaml gives it `source_config.face_seq.sampling: segments` (one crop in each of 6
    segments of the whole clip, as DeepPersonality's loader; before 2026-12-05 it read 6
    consecutive crops, 0.75 s at 8 fps). DeepPersonality's ImgLSTM (bi_modal_lstm.py) is another
    net: 3 plain convs (16 channels, kernels 5 / 7 / 9) and Linear 1024 -> 128 on 112 px crops, an
    LSTM of 128, a Linear + sigmoid at every step, the 6 predictions averaged."""

    inputs = ("face_seq",)

    def __init__(self, config: CNNLSTMConfig):
        super().__init__()
        self.config = config
        self.encoder = FrameEncoder(width=config.width, layers=config.layers)
        self.lstm = nn.LSTM(self.encoder.out_features, config.lstm_hidden, config.lstm_layers,
                            batch_first=True, bidirectional=config.bidirectional)
        self.head = make_head(config, config.lstm_hidden * (2 if config.bidirectional else 1))

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        h, _ = self.lstm(self.encoder(seq_input(batch)))  # (B, T, D) -> (B, T, H)
        return h.mean(dim=1)  # (B, H)


@register("cnn_lstm_face_seq", modality="visual", inputs=("face_seq",), source="after "
          "DeepPersonality's ImgLSTM (bi_modal_lstm.py; visual branch of Subramaniam et al. 2016)",
          card="Per-frame ResNet features of a face clip (params.yaml: 6 crops, one per segment "
               "of the whole clip) through an LSTM, states averaged into the head (DP: 3-conv CNN "
               "at 112 px, per-step sigmoid predictions averaged)")
def cnn_lstm_face_seq(*, config: CNNLSTMConfig | None = None, **overrides: Any) -> CNNLSTM:
    return finish(CNNLSTM(make_config(CNNLSTMConfig, config, overrides, "cnn_lstm_face_seq")))


# 3D ResNet (torchvision r3d_18's layout: Conv3DSimple basic blocks, 3x7x7 stem; width
# configurable). DeepPersonality's is a 3D-ResNet-50 (resnet_3d.py, from Hara et al.'s
# 3D-ResNets-PyTorch).


class Block3D(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.down = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, C', T', H', W')
        idt = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + idt)


@dataclasses.dataclass
class R3DConfig(HeadFields):
    width: int = 16  # r3d_18: 64
    layers: tuple[int, ...] = (1, 1, 1, 1)  # r3d_18: (2, 2, 2, 2)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_head(self, "r3d_face_seq")
        if self.width < 1 or not self.layers or any(n < 1 for n in self.layers):
            raise ValueError("r3d_face_seq: width and layers must be positive")


class R3DModel(ZooModel):
    """3D ResNet (Tran et al. 2018, torchvision r3d_18 layout) on a face clip. DeepPersonality's
    resnet50_3d_model: bottleneck blocks (3, 4, 6, 3), widths 256-2048, a 7x7x7 stem and a 3x3x3 max
    pool, 16 frames at 224 px, one Linear without sigmoid."""

    inputs = ("face_seq",)

    def __init__(self, config: R3DConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(nn.Conv3d(3, w, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3),
                                            bias=False), nn.BatchNorm3d(w), nn.ReLU(inplace=True))
        blocks, c_in = [], w
        for i, n in enumerate(config.layers):
            c = w * 2 ** i
            for k in range(n):
                blocks.append(Block3D(c_in, c, stride=2 if (i > 0 and k == 0) else 1))
                c_in = c
        self.body = nn.Sequential(*blocks)
        self.head = make_head(config, c_in)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = seq_input(batch).transpose(1, 2)  # (B, T, 3, H, W) -> (B, 3, T, H, W): Conv3d layout
        return self.body(self.stem(x)).mean(dim=(2, 3, 4))  # (B, C, T', H', W') -> (B, C)


@register("r3d_face_seq", modality="visual", inputs=("face_seq",), source="torchvision r3d_18 "
          "(Tran et al. 2018), after DeepPersonality's 3D-ResNet-50 (resnet_3d.py)",
          card="3D ResNet (r3d_18 layout: 3x7x7 stem, basic blocks, 1 per stage, small width) on "
               "a 6-frame face clip (DP: 3D-ResNet-50, 16 frames at 224 px, no output sigmoid)")
def r3d_face_seq(*, config: R3DConfig | None = None, **overrides: Any) -> R3DModel:
    return finish(R3DModel(make_config(R3DConfig, config, overrides, "r3d_face_seq")))
