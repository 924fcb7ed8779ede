"""Swin Transformer on face crops (`swin_face`): shifted-window self-attention (Liu et al. 2021),
re-implementing the network of DeepPersonality's swin_transformer.py.

    from models import build_model
    model = build_model("swin_face", embed_dim=32, depths=(2, 2, 2), heads=(2, 4, 8))
    scores = model.predict({"face": x})        # x (B, 3, 64, 64) normalised -> (B, 5)

The image is cut in `patch` x `patch` patches (a strided conv), then stages of Swin blocks: each
block attends inside non-overlapping `window` x `window` windows of tokens, with a learned
relative-position bias per head; every second block shifts the windows by window / 2 (a cyclic
roll of the map, with an attention mask so that tokens wrapped around from the other edge do not
attend to each other), which connects neighbouring windows. Between stages a patch merging layer
concatenates 2 x 2 neighbours (4C) and projects them to 2C: the map halves, the width doubles.
The windows are fixed at build time for crops of `size` px; a window larger than a stage's map
shrinks to the map (then there is nothing to shift). The tokens of the
last stage are layer-normed and averaged into the head. Not re-implemented: stochastic depth
(drop path) and absolute position embeddings (off in Swin-T as well).

DeepPersonality's network is Swin-S (swin_small_patch4_window7_224: embed 96, depths 2, 2, 18, 2,
heads 3, 6, 12, 24, window 7, MLP ratio 4, drop path 0.3) on 224 px crops, one Linear + sigmoid;
the CPU config here is three stages (2, 2, 2) at embed 16, window 4, MLP ratio 2, 64 px, the zoo's
MLP head. The comments below compare with Swin-T, the smallest published size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register
from models.visual import HeadFields, ZooModel, check_head, finish, image_input, make_config, \
    make_head

__all__ = ["SwinConfig", "SwinFace", "window_partition", "window_reverse", "shift_mask"]


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, H, W, C) -> (B, nW, ws * ws, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)  # (B, H/ws, ws, W/ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, (H // ws) * (W // ws), ws * ws, C)


def window_reverse(windows: Tensor, ws: int, H: int, W: int) -> Tensor:
    """(B, nW, ws * ws, C) -> (B, H, W, C): the inverse of window_partition."""
    B, C = windows.shape[0], windows.shape[-1]
    x = windows.view(B, H // ws, W // ws, ws, ws, C)  # (B, H/ws, W/ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


def shift_mask(H: int, W: int, ws: int, shift: int, device: torch.device) -> Tensor:
    """Additive attention mask (nW, N, N) for windows shifted by `shift`: 0 between tokens of the
    same image region, -inf-like between tokens that the cyclic roll brought together."""
    region = torch.zeros(1, H, W, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[:, hs, wsl, :] = label
            label += 1
    ids = window_partition(region, ws).squeeze(-1)[0]  # (nW, N)
    same = ids[:, :, None] == ids[:, None, :]  # (nW, N, N)
    return torch.zeros(same.shape, device=device).masked_fill(~same, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned bias per head for every
    relative offset (2 ws - 1)^2 between two tokens of a window."""

    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.ws = heads, ws
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        coords = coords.flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]) + (ws - 1)  # (2, N, N) in [0, 2 ws - 2]
        self.register_buffer("bias_index", rel[0] * (2 * ws - 1) + rel[1], persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, nW, N, C), mask (nW, N, N) or None -> (B, nW, N, C)."""
        B, nW, N, C = x.shape
        qkv = self.qkv(x).view(B, nW, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).flatten(1, 2)  # each (B*nW, heads, N, d)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)  # (N, N, heads) -> (heads, N, N)
        attn_mask = bias[None]  # (1, heads, N, N)
        if mask is not None:  # (nW, 1, N, N) + bias, repeated over the batch: (B*nW, heads, N, N)
            attn_mask = (mask[:, None] + attn_mask).expand(B, -1, -1, -1, -1).flatten(0, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.view(B, nW, self.heads, N, -1).transpose(2, 3).reshape(B, nW, N, C))


class SwinBlock(nn.Module):
    """LN - (shifted) window attention - residual; LN - MLP - residual. x (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        h = self.norm1(x)
        mask = None
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shift_mask(H, W, self.ws, self.shift, x.device)  # (nW, N, N)
        h = self.attn(window_partition(h, self.ws), mask)  # (B, nW, ws*ws, C)
        h = window_reverse(h, self.ws, H, W)  # (B, H, W, C)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): 2 x 2 neighbours concatenated, LN, linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)  # (B, H/2, W/2, 4C)
        return self.reduce(self.norm(x))


@dataclasses.dataclass
class SwinConfig(HeadFields):
    patch: int = 4  # patch size (Swin-T: 4)
    embed_dim: int = 32  # stage-1 width (Swin-T: 96); stage s: embed_dim * 2^s
    depths: tuple[int, ...] = (2, 2, 2)  # blocks per stage (Swin-T: 2,2,6,2; DP Swin-S: 2,2,18,2)
    heads: tuple[int, ...] = (2, 4, 8)  # attention heads per stage (Swin-T: 3, 6, 12, 24)
    window: int = 4  # window side in tokens (Swin-T at 224 px: 7); 64 px / 4 = 16 tokens a side
    mlp_ratio: float = 2.0  # Swin-T: 4
    size: int = 64  # input crop side (source_config.face.size): fixes each stage's windows

    def __post_init__(self) -> None:
        self.depths, self.heads = tuple(self.depths), tuple(self.heads)
        check_head(self, "swin_face")
        if not self.depths or len(self.depths) != len(self.heads) or \
                any(v < 1 for v in self.depths + self.heads) or self.patch < 1 or self.window < 1:
            raise ValueError("swin_face: depths and heads: one per stage, positive; patch, window "
                             ">= 1")
        if any((self.embed_dim * 2 ** s) % h for s, h in enumerate(self.heads)):
            raise ValueError("swin_face: every stage's width embed_dim * 2^s must be a multiple "
                             "of its heads")
        for side, ws, _ in self.windows():
            if side < 1 or side % ws:
                raise ValueError(f"swin_face: size {self.size} gives a {side}x{side} token map "
                                 f"that does not split in {ws}x{ws} windows: use a size of "
                                 "patch * window * 2^(stages - 1)")

    def windows(self) -> list[tuple[int, int, int]]:
        """(map side, window side, shift) per stage. A window as large as the map or larger
        shrinks to the map, and then there is nothing to shift (Swin's rule)."""
        out = []
        for s in range(len(self.depths)):
            side = self.size // self.patch // 2 ** s
            ws = max(1, min(self.window, side))
            out.append((side, ws, ws // 2 if ws < side else 0))
        return out


class SwinFace(ZooModel):
    """Patch embedding, Swin stages with patch merging between them, LN, token mean, head."""

    inputs = ("face",)

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.embed = nn.Conv2d(3, d, config.patch, stride=config.patch)
        self.embed_norm = nn.LayerNorm(d)
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        for s, ((_, ws, shift), depth, heads) in enumerate(zip(config.windows(), config.depths,
                                                                config.heads)):
            dim = d * 2 ** s
            self.stages.append(nn.ModuleList(  # every second block shifted
                SwinBlock(dim, heads, ws, shift if i % 2 else 0, config.mlp_ratio)
                for i in range(depth)))
            self.merges.append(PatchMerging(dim) if s < len(config.depths) - 1 else nn.Identity())
        self.out_features = d * 2 ** (len(config.depths) - 1)
        self.norm = nn.LayerNorm(self.out_features)
        self.head = make_head(config, self.out_features)

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = image_input(batch, "face")
        x = self.embed(x).permute(0, 2, 3, 1)  # (B, d, H/p, W/p) -> (B, H/p, W/p, d)
        side = self.config.size // self.config.patch
        if x.shape[1:3] != (side, side):
            raise ValueError(f"swin_face: built for {self.config.size} px crops (config size), "
                             f"got {tuple(batch['face'].shape[-2:])}")
        x = self.embed_norm(x)
        for blocks, merge in zip(self.stages, self.merges):
            for block in blocks:
                x = block(x)  # (B, H, W, C)
            x = merge(x)  # (B, H/2, W/2, 2C) between stages
        return self.norm(x).flatten(1, 2).mean(dim=1)  # (B, h*w, C) -> (B, C)


@register("swin_face", modality="visual", inputs=("face",), source="DeepPersonality Swin "
          "Transformer (swin_transformer.py, Swin-S; Liu et al. 2021)",
          card="Re-implements DeepPersonality's Swin Transformer (Liu et al. 2021): patch "
               "embedding, shifted-window attention with relative position bias, patch merging, "
               "on face crops; smaller (DP: Swin-S, depths 2,2,18,2, drop path 0.3, 224 px)")
def swin_face(*, config: SwinConfig | None = None, **overrides: Any) -> SwinFace:
    return finish(SwinFace(make_config(SwinConfig, config, overrides, "swin_face")))
