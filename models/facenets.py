"""Two more of DeepPersonality's face networks: the PersEmoN face trunk (`sphereface_face`) and the
multi-modal prediction net (`multi_modal_pred_net`, face + log-mel).

    from models import build_model
    model = build_model("sphereface_face")
    scores = model.predict({"face": x})                   # x (B, 3, 64, 64) -> (B, 5)
    model = build_model("multi_modal_pred_net")
    scores = model.predict({"face": x, "logmel": m})      # m (B, 64, T) -> (B, 5)

`sphereface_face` re-implements SphereFEM of DeepPersonality's sphereface_net.py, PersEmoN's
feature extraction module (Zhang et al. 2019, "PersEmoN: a deep network for joint analysis of
apparent personality, emotion and their relationship"), itself SphereFace-20 (Liu et al. 2017):
four stages, each a stride-2 3x3 conv + PReLU followed by 1, 2, 4, 1 residual units (conv-PReLU-
conv-PReLU, identity shortcut, no batch norm), then a fully connected layer from the flattened
last map to a 512-d embedding (`embed`), and PersEmoN's personality module, one linear layer per
trait (`hidden: 0`), into sigmoid scores. The last map is average-pooled to `grid` x `grid` first
so that any crop size works (at 64 px it is already 4 x 4). Only the face trunk: PersEmoN's
emotion module, its relation module and its adversarial data classifier need emotion-labelled
images, which this pipeline does not have. Further differences from DeepPersonality's: the zoo's
head puts Dropout(0.3) (`dropout`, the HeadFields default) before that linear layer, which
PersEmoN's `pam` lacks; widths 8-64 in params.yaml (DP: 64-512), a 128-d embedding (DP: 512 from
a 7 x 7 map of 112 px crops); the loss is MSE, where DeepPersonality's PeremonLoss puts a
smooth-L1 / 10 on the personality scores beside its emotion and adversarial terms.

`multi_modal_pred_net` re-implements the heads of DeepPersonality's multi_modal_pred_net.py: a
ResNet's layer-3 and layer-4 maps, each global-max- and global-average-pooled and concatenated (the
ResNetFeatureExtractor), into a visual FC net (dropout, Linear, ReLU, Linear); the log-mel,
average-pooled to `audio_steps` steps, flattened and standardised per clip, into an audio FC net
(AudioFCNet). DeepPersonality trains the two as separate models and averages their predictions
afterwards (tools/cmp_multi_modal_post_fusion.py); here one model holds both: the loss is the sum
of each branch's own masked MSE (so each branch learns to predict alone, as when trained apart) and
the prediction is the mean of the two branches' predictions. The inputs are not DeepPersonality's:
there the visual FC net reads pre-extracted features of a frozen, ImageNet-trained ResNet-101
(6,144-d per image: frames or face crops at 224 px) and its per-image predictions are averaged over
the clip's sampled images; the audio FC net reads 15 x 128 VGGish embeddings (torchvggish, about
one per 0.96 s of the 15 s clip), standardised over the batch. Here a small ResNet (width 8, basic
blocks) is trained from scratch with the head on one face crop per view, and the audio net reads a
log-mel pooled to 15 steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.audio import logmel_input
from models.registry import register
from models.resnet_blocks import BasicBlock
from models.visual import (HeadFields, ResNetTrunk, ZooModel, check_head, finish, image_input,
                           make_config, make_head)

__all__ = ["SphereFaceConfig", "SphereFace", "MultiModalPredConfig", "MultiModalPredNet"]


# --------------------------------------------------------------------------------------------------
# SphereFace-20 (PersEmoN's face trunk)


class SphereUnit(nn.Module):
    """x + PReLU(conv(PReLU(conv(x)))): SphereFace's residual unit, no batch norm."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.PReLU(c),
                                  nn.Conv2d(c, c, 3, padding=1), nn.PReLU(c))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return x + self.body(x)


@dataclasses.dataclass
class SphereFaceConfig(HeadFields):
    width: int = 16  # stage-1 channels; stage s: width * 2^s (SphereFace-20: 64 ... 512)
    units: tuple[int, ...] = (1, 2, 4, 1)  # residual units per stage (SphereFace-20)
    grid: int = 4  # the last map is average-pooled to grid x grid before the FC (DP at 112 px: 7x7)
    embed: int = 128  # FC embedding (SphereFace / PersEmoN: 512)
    hidden: int = 0  # personality module: one linear layer (PersEmoN's pam; ours adds the head's
    #                  Dropout(dropout = 0.3) before it, which pam has not)

    def __post_init__(self) -> None:
        self.units = tuple(self.units)
        check_head(self, "sphereface_face")
        if self.width < 1 or not self.units or any(n < 0 for n in self.units) or \
                self.grid < 1 or self.embed < 1:
            raise ValueError("sphereface_face: width, grid, embed >= 1; units >= 0 per stage")


class SphereFace(ZooModel):
    """SphereFace-20 trunk, FC embedding, personality head (see the docstring of the module)."""

    inputs = ("face",)

    def __init__(self, config: SphereFaceConfig):
        super().__init__()
        self.config = config
        stages, c_in = [], 3
        for s, n in enumerate(config.units):
            c = config.width * 2 ** s
            stages += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.PReLU(c)]
            stages += [SphereUnit(c) for _ in range(n)]
            c_in = c
        self.body = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(config.grid)
        self.fc = nn.Linear(c_in * config.grid ** 2, config.embed)
        self.head = make_head(config, config.embed)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        h = self.body(image_input(batch, "face"))  # (B, 3, H, W) -> (B, C, H/16, W/16)
        return self.fc(self.pool(h).flatten(1))  # (B, C, g, g) -> (B, C g^2) -> (B, embed)


@register("sphereface_face", modality="visual", inputs=("face",), source="DeepPersonality "
          "PersEmoN's face trunk (sphereface_net.py; Zhang et al. 2019; SphereFace, Liu et al. "
          "2017)",
          card="Re-implements DeepPersonality's PersEmoN face trunk (Zhang et al. 2019): "
               "SphereFace-20 residual CNN with PReLU, FC embedding, linear personality module "
               "(with a Dropout 0.3 that PersEmoN lacks), on face crops; no emotion branch")
def sphereface_face(*, config: SphereFaceConfig | None = None, **overrides: Any) -> SphereFace:
    return finish(SphereFace(make_config(SphereFaceConfig, config, overrides, "sphereface_face")))


# --------------------------------------------------------------------------------------------------
# multi-modal prediction net


@dataclasses.dataclass
class MultiModalPredConfig(HeadFields):
    n_mels: int = 64
    width: int = 8  # visual ResNet width (DeepPersonality: a frozen ImageNet ResNet-101)
    layers: tuple[int, ...] = (1, 1, 1, 1)  # its BasicBlocks per stage
    hidden: int = 64  # visual FC net width (DeepPersonality: 512)
    dropout: float = 0.5  # before the visual FC net (DeepPersonality's nn.Dropout())
    audio_steps: int = 15  # log-mel average-pooled to this many steps (DP: 15 VGGish embeddings)
    audio_hidden: tuple[int, int] = (128, 64)  # audio FC net (DeepPersonality: 1024, 512)

    def __post_init__(self) -> None:
        self.layers, self.audio_hidden = tuple(self.layers), tuple(self.audio_hidden)
        check_head(self, "multi_modal_pred_net")
        if self.head == "classification" or self.hidden < 1:
            raise ValueError("multi_modal_pred_net: each branch regresses the scores: head "
                             "'regression' or 'regression_z', hidden >= 1")
        if len(self.layers) != 4 or len(self.audio_hidden) != 2 or self.audio_steps < 1 or \
                min(self.audio_hidden) < 1:
            raise ValueError("multi_modal_pred_net: four layers, two audio_hidden widths, "
                             "audio_steps >= 1")


class MultiModalPredNet(ZooModel):
    """Visual and audio predictors side by side; forward returns (B, 5, 2): [..., 0] the visual
    branch's scores, [..., 1] the audio branch's; decode averages them."""

    inputs = ("face", "logmel")

    def __init__(self, config: MultiModalPredConfig):
        super().__init__()
        self.config = config
        self.visual = ResNetTrunk(BasicBlock, config.layers, width=config.width)
        c3, c4 = config.width * 4, config.width * 8
        self.visual_fc = nn.Sequential(nn.Dropout(config.dropout),
                                       nn.Linear(2 * (c3 + c4), config.hidden), nn.ReLU(),
                                       nn.Linear(config.hidden, 5))
        h1, h2 = config.audio_hidden
        self.audio_fc = nn.Sequential(nn.Linear(config.n_mels * config.audio_steps, h1), nn.ReLU(),
                                      nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 5))
        self.head = nn.Identity()  # the two FC nets above are the heads

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The visual descriptor: max and mean of layer 3 and layer 4, (B, 2 (C3 + C4))."""
        trunk = self.visual
        h = trunk.stages[:2](trunk.stem(image_input(batch, "face")))  # (B, 2w, H/8, W/8)
        x3 = trunk.stages[2](h)  # (B, 4w, H/16, W/16)
        x4 = trunk.stages[3](x3)  # (B, 8w, H/32, W/32)
        return torch.cat([x3.amax(dim=(2, 3)), x3.mean(dim=(2, 3)), x4.amax(dim=(2, 3)),
                          x4.mean(dim=(2, 3))], dim=1)

    def audio_features(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The log-mel pooled to audio_steps, flattened, standardised per clip: (B, M * steps)."""
        mel = F.adaptive_avg_pool1d(logmel_input(batch, self.config.n_mels),
                                    self.config.audio_steps).flatten(1)  # (B, M * steps)
        return (mel - mel.mean(dim=1, keepdim=True)) / (mel.std(dim=1, keepdim=True) + 1e-6)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        out = torch.stack([self.visual_fc(self.features(batch)),
                           self.audio_fc(self.audio_features(batch))], dim=2)  # (B, 5, 2)
        return torch.sigmoid(out) if self.config.head == "regression" else out

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Sum over the two branches of the masked MSE against targets (B, 5), NaN unlabelled."""
        valid = ~torch.isnan(targets)  # (B, 5)
        sq = (outputs - targets.nan_to_num(0.0)[..., None]) ** 2 * valid[..., None]  # (B, 5, 2)
        return sq.sum() / valid.sum().clamp_min(1)

    def decode(self, outputs: Tensor) -> Tensor:
        return outputs.mean(dim=2)  # (B, 5, 2) -> (B, 5): the two predictions averaged

    def proba(self, outputs: Tensor) -> None:
        return None


@register("multi_modal_pred_net", modality="audio-visual", inputs=("face", "logmel"),
          source="DeepPersonality multi-modal prediction net (multi_modal_pred_net.py)",
          card="DeepPersonality's multi_modal_pred_net heads on other inputs: a small face ResNet "
               "trained end to end (DP: frozen ImageNet ResNet-101 features) into a visual FC "
               "net, a log-mel pooled to 15 steps (DP: 15 x 128 VGGish) into an audio FC net, "
               "predictions averaged")
def multi_modal_pred_net(*, config: MultiModalPredConfig | None = None, **overrides: Any
                         ) -> MultiModalPredNet:
    return finish(MultiModalPredNet(make_config(MultiModalPredConfig, config, overrides,
                                                "multi_modal_pred_net")))
