"""Audio-visual models after DeepPersonality's: bimodal ResNet (late fusion), bimodal CNN-LSTM over
six segments, CRNet-style classification-guided regression.

All three hear the log-mel through models/audio.py's LogmelEncoder, a CNN of ours: none of
DeepPersonality's audio-visual networks reads a log-mel. Its bimodal ResNet and CR-Net read the
raw 16 kHz wave with a ResNet (a 50,176-sample crop; the whole clip for CR-Net), its bimodal LSTM
68-d mid-term audio features per segment of the whole clip. docs/models.md, "Against
DeepPersonality: what differs", lists the rest.

    model = build_model("bimodal_resnet")
    model.predict({"face": f, "logmel": m})   # f (B, 3, H, W), m (B, 64, T) -> (B, 5)

Heads and `weights` as in models/visual.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.audio import LogmelEncoder, logmel_input
from models.metrics import N_BINS
from models.registry import register
from models.resnet_blocks import BasicBlock
from models.visual import (HeadFields, ResNetTrunk, ZooModel, check_head, finish, image_input,
                           make_config, make_head, seq_input)

__all__ = ["BimodalResNetConfig", "BimodalResNet", "BimodalLSTMConfig", "BimodalLSTM",
           "CRNetConfig", "CRNet"]


@dataclasses.dataclass
class BimodalResNetConfig(HeadFields):
    n_mels: int = 64
    width: int = 16  # visual ResNet-18 trunk width (torchvision: 64)
    layers: tuple[int, ...] = (2, 2, 2, 2)  # its BasicBlocks per stage
    audio_widths: tuple[int, ...] = (16, 32, 64, 128)  # log-mel CNN blocks
    time_pool: int = 1  # log-mel CNN: average-pool the input over this many 10 ms steps first
    modality_dropout: float = 0.0  # training: zero one modality's features with this probability

    def __post_init__(self) -> None:
        self.layers, self.audio_widths = tuple(self.layers), tuple(self.audio_widths)
        check_head(self, "bimodal_resnet")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError("bimodal_resnet: modality_dropout must be in [0, 1)")


class BimodalResNet(ZooModel):
    """A face ResNet and a log-mel CNN, their pooled features concatenated (late fusion) into the
    head (Güçlütürk et al. 2016's two-stream ResNet, audio on log-mel here).

    DeepPersonality's AudioVisualResNet18 (audio_visual_residual.py): a ResNet-18 (widths 32-256)
    on one full frame at 224 px and a raw-wave ResNet-18 (1 x 49 stem, 1 x 9 convs) on a 50,176-
    sample crop at 16 kHz, concatenated into Linear 512 -> 256, LayerNorm, ReLU, Linear, sigmoid.
    Here: a face crop instead of the full frame, the log-mel CNN instead of the wave ResNet, the
    zoo's MLP head (Linear, ReLU, Dropout, Linear, sigmoid)."""

    inputs = ("face", "logmel")

    def __init__(self, config: BimodalResNetConfig):
        super().__init__()
        self.config = config
        self.visual = ResNetTrunk(BasicBlock, config.layers, width=config.width)
        self.audio = LogmelEncoder(config.audio_widths, time_pool=config.time_pool)
        self.head = make_head(config, self.visual.out_features + self.audio.out_features)

    def min_lengths(self) -> dict[str, int]:
        return {"logmel": self.audio.min_steps()}

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        v = self.visual(image_input(batch, "face"))  # (B, Dv)
        a = self.audio(logmel_input(batch, self.config.n_mels))  # (B, Da)
        p = self.config.modality_dropout
        if self.training and p > 0:
            B = v.shape[0]
            drop = torch.rand(B, device=v.device) < p  # which rows lose a modality
            which = torch.rand(B, device=v.device) < 0.5  # ... and which one
            v = v * ~(drop & which)[:, None]
            a = a * ~(drop & ~which)[:, None]
        return torch.cat([v, a], dim=1)  # (B, Dv + Da)


@register("bimodal_resnet", modality="audio-visual", inputs=("face", "logmel"),
          source="after DeepPersonality's AudioVisualResNet18 (audio_visual_residual.py; "
                 "Güçlütürk et al. 2016)",
          card="Face-crop ResNet-18 + log-mel CNN, pooled features concatenated into an MLP head "
               "(DP: full-frame ResNet-18 + raw-wave ResNet-18, Linear-LayerNorm-ReLU-Linear)")
def bimodal_resnet(*, config: BimodalResNetConfig | None = None, **overrides: Any
                   ) -> BimodalResNet:
    return finish(BimodalResNet(make_config(BimodalResNetConfig, config, overrides,
                                            "bimodal_resnet")))


@dataclasses.dataclass
class BimodalLSTMConfig(HeadFields):
    n_mels: int = 64
    segments: int = 6  # the clip is cut in this many segments (Subramaniam et al., DP: 6)
    width: int = 16  # per-frame visual ResNet trunk width
    layers: tuple[int, ...] = (1, 1, 1, 1)
    audio_widths: tuple[int, ...] = (16, 32, 64)  # per-segment log-mel CNN
    time_pool: int = 1  # log-mel CNN: average-pool the input over this many 10 ms steps first
    lstm_hidden: int = 128  # (DeepPersonality: 512)

    def __post_init__(self) -> None:
        self.layers, self.audio_widths = tuple(self.layers), tuple(self.audio_widths)
        check_head(self, "bimodal_lstm")
        if self.segments < 1:
            raise ValueError("bimodal_lstm: segments must be >= 1")


class BimodalLSTM(ZooModel):
    """Subramaniam et al. 2016's bimodal LSTM: the face sequence and the log-mel are each cut in
    `segments` equal segments; per segment, the mean CNN feature of its frames and a log-mel CNN
    feature of its audio are concatenated; an LSTM runs over the segments; its outputs are
    averaged into the head. face_seq T must be >= segments (the face_seq source's `segments`
    sampling gives T = segments, one frame per segment).

    What it reads (params.yaml): face_seq with `sampling: segments` (its own
    `train.model_config.bimodal_lstm.source_config`, since 2026-12-05; before, 6 consecutive crops,
    0.75 s at 8 fps), so the 6 face crops span the whole clip, one per segment, as in
    DeepPersonality. The audio does not: it is the log-mel source's 3 s crop (random in training,
    the centre at evaluation) cut into 6 segments of 0.5 s, so the audio segments are not the
    face segments' time spans. DeepPersonality's BiModelLSTM (bi_modal_lstm.py) reads, per segment
    of the whole clip, one 112 px face (3 plain convs with 16 channels, kernels 5 / 7 / 9, Linear
    1024 -> 128) and 68 mid-term audio features (Linear 68 -> 32), an LSTM of 512, and averages
    the 6 per-step sigmoid predictions; here a ResNet trunk and the log-mel CNN per segment, and
    the LSTM states are averaged into the zoo's head."""

    inputs = ("face_seq", "logmel")

    def __init__(self, config: BimodalLSTMConfig):
        super().__init__()
        self.config = config
        self.visual = ResNetTrunk(BasicBlock, config.layers, width=config.width)
        self.audio = LogmelEncoder(config.audio_widths, time_pool=config.time_pool)
        self.lstm = nn.LSTM(self.visual.out_features + self.audio.out_features,
                            config.lstm_hidden, batch_first=True)
        self.head = make_head(config, config.lstm_hidden)

    def min_lengths(self) -> dict[str, int]:
        # T // segments steps per segment, each through the log-mel CNN; and a face crop per
        # segment at least (features raises a ValueError under it)
        return {"logmel": self.config.segments * self.audio.min_steps(),
                "face_seq": self.config.segments}

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        faces = seq_input(batch)  # (B, T, 3, H, W)
        mel = logmel_input(batch, self.config.n_mels)  # (B, M, Ta)
        B, T = faces.shape[:2]
        S = self.config.segments
        if T < S or mel.shape[2] < S:
            raise ValueError(f"bimodal_lstm: need >= {S} frames and audio steps, got face_seq "
                             f"T={T}, logmel T={mel.shape[2]}")
        tf, ta = T // S, mel.shape[2] // S
        v = self.visual(faces[:, :S * tf].flatten(0, 1))  # (B*S*tf, 3, H, W) -> (B*S*tf, Dv)
        v = v.view(B, S, tf, -1).mean(dim=2)  # (B, S, Dv): mean over a segment's frames
        segs = mel[:, :, :S * ta].reshape(B, mel.shape[1], S, ta)  # (B, M, S, ta)
        segs = segs.permute(0, 2, 1, 3).flatten(0, 1)  # (B*S, M, ta)
        a = self.audio(segs).view(B, S, -1)  # (B, S, Da)
        h, _ = self.lstm(torch.cat([v, a], dim=2))  # (B, S, Dv + Da) -> (B, S, H)
        return h.mean(dim=1)  # (B, H)


@register("bimodal_lstm", modality="audio-visual", inputs=("face_seq", "logmel"),
          source="after DeepPersonality's BiModelLSTM (bi_modal_lstm.py; Subramaniam et al. "
                 "2016)",
          card="Per segment (6): a face crop from that segment of the whole clip (params.yaml; "
               "ResNet trunk) + a 0.5 s piece of a 3 s log-mel crop (CNN), LSTM over segments "
               "(DP: 6 x 68 mid-term audio features over the whole clip, 3-conv CNN)")
def bimodal_lstm(*, config: BimodalLSTMConfig | None = None, **overrides: Any) -> BimodalLSTM:
    return finish(BimodalLSTM(make_config(BimodalLSTMConfig, config, overrides, "bimodal_lstm")))


@dataclasses.dataclass
class CRNetConfig(HeadFields):
    n_mels: int = 64
    width: int = 16  # width of both visual ResNet-18 trunks (face and full frame)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    audio_widths: tuple[int, ...] = (16, 32, 64, 128)
    time_pool: int = 1  # log-mel CNN: average-pool the input over this many 10 ms steps first
    n_bins: int = N_BINS  # classification branch: bins per trait (bin = floor(n_bins * p))
    cls_weight: float = 1.0  # loss = MSE(regression) + cls_weight * CE(bins) / 5

    def __post_init__(self) -> None:
        self.layers, self.audio_widths = tuple(self.layers), tuple(self.audio_widths)
        check_head(self, "crnet")
        if self.head == "classification":
            raise ValueError("crnet: the classification branch is built in; head must be "
                             "'regression' or 'regression_z'")
        if self.n_bins < 2 or self.cls_weight < 0:
            raise ValueError("crnet: n_bins >= 2 and cls_weight >= 0")


class CRNet(ZooModel):
    """CR-Net-style (Li et al. 2020) classification-guided regression: shared features of three
    streams, as in the paper (local: the aligned face; global: the full frame, scene and body;
    audio: the log-mel); a classification branch predicts each trait's bin; the regression branch
    sees the features together with the bin probabilities and the bins' expected value, per trait.

    Not DeepPersonality's CRNet2 (cr_net.py): there three ResNet-34 trunks (frame 224 px, face 112
    px, the whole clip's raw wave) keep 4 feature cells each (2 x 2 or 1 x 4); per trait, 4 bin
    logits (bins < 0.5, 0.5-0.6, 0.6-0.7, >= 0.7) softmax-weight those cells, summed over the
    streams into one shared Linear(512, 1) without sigmoid; it trains the classifier alone for
    its first two epochs, then everything on L1 + MSE + Bell loss + a CE ramped up over the
    epochs (SGD, then Adam). Here pooled features, `n_bins` uniform bins, an MLP regression
    branch with a sigmoid, one joint MSE + CE loss, the log-mel for audio.

    forward returns one tensor (B, 5, n_bins + 1): [..., :n_bins] the bin logits, [..., -1] the
    regressed score (sigmoid for head="regression"). loss = masked MSE + cls_weight * masked CE.
    """

    inputs = ("face", "frame", "logmel")

    def __init__(self, config: CRNetConfig):
        super().__init__()
        self.config = config
        self.visual = ResNetTrunk(BasicBlock, config.layers, width=config.width)  # local: face
        self.scene = ResNetTrunk(BasicBlock, config.layers, width=config.width)  # global: frame
        self.audio = LogmelEncoder(config.audio_widths, time_pool=config.time_pool)
        d = self.visual.out_features + self.scene.out_features + self.audio.out_features
        k = config.n_bins
        hidden = max(config.hidden, 16)
        self.cls_branch = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(config.dropout),
                                        nn.Linear(hidden, 5 * k))
        self.reg_trunk = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(config.dropout))
        # per trait: shared regression features + that trait's bin probabilities and expectation
        self.reg_out = nn.Linear(hidden + k + 1, 1)
        self.register_buffer("centres", (torch.arange(k, dtype=torch.float32) + 0.5) / k,
                             persistent=False)
        self.head = nn.Identity()  # the two branches above are the head

    def min_lengths(self) -> dict[str, int]:
        return {"logmel": self.audio.min_steps()}

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        v = self.visual(image_input(batch, "face"))  # (B, Dv)
        g = self.scene(image_input(batch, "frame"))  # (B, Dv)
        a = self.audio(logmel_input(batch, self.config.n_mels))  # (B, Da)
        return torch.cat([v, g, a], dim=1)  # (B, D)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        f = self.features(batch)  # (B, D)
        B, k = f.shape[0], self.config.n_bins
        logits = self.cls_branch(f).view(B, 5, k)  # (B, 5 * k) -> (B, 5, k)
        p = logits.softmax(dim=-1)  # (B, 5, k)
        expect = (p @ self.centres)[..., None]  # (B, 5, 1)
        r = self.reg_trunk(f)[:, None, :].expand(B, 5, -1)  # (B, H) -> (B, 5, H)
        score = self.reg_out(torch.cat([r, p, expect], dim=2))  # (B, 5, H + k + 1) -> (B, 5, 1)
        if self.config.head == "regression":
            score = torch.sigmoid(score)
        return torch.cat([logits, score], dim=2)  # (B, 5, k + 1)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        k = self.config.n_bins
        logits, score = outputs[..., :k], outputs[..., k]  # (B, 5, k), (B, 5)
        valid = ~torch.isnan(targets)  # (B, 5)
        t = targets.nan_to_num(0.0)
        mse = ((score - t) ** 2 * valid).sum() / valid.sum().clamp_min(1)
        if self.config.head == "regression_z":  # bins of a z-score: Phi(z) in [0, 1]
            t = 0.5 * (1 + torch.erf(t / 2 ** 0.5))
        bins = torch.floor(k * t).clamp(0, k - 1).long()  # (B, 5)
        ce = F.cross_entropy(logits.reshape(-1, k), bins.reshape(-1), reduction="none")
        ce = (ce.view_as(t) * valid).sum() / valid.sum().clamp_min(1)
        return mse + self.config.cls_weight * ce

    def decode(self, outputs: Tensor) -> Tensor:
        return outputs[..., -1]  # (B, 5)

    def proba(self, outputs: Tensor) -> Tensor:
        return outputs[..., :-1].softmax(dim=-1)  # (B, 5, n_bins)


@register("crnet", modality="audio-visual", inputs=("face", "frame", "logmel"),
          source="CR-Net (Li et al. 2020), after DeepPersonality's CRNet2 (cr_net.py)",
          card="Classification-guided regression on pooled face + full-frame + log-mel features: "
               "5 uniform bins whose probabilities feed a per-trait MLP regressor, sigmoid, joint "
               "MSE + CE (DP: ResNet-34s, raw wave, 4 uneven bins weighting feature cells, "
               "two phases)")
def crnet(*, config: CRNetConfig | None = None, **overrides: Any) -> CRNet:
    return finish(CRNet(make_config(CRNetConfig, config, overrides, "crnet")))
