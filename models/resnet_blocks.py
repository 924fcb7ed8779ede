"""The two residual blocks of the ResNet family (He et al. 2016), for the ResNet trunks of
models/visual.py, models/video.py, models/facenets.py and models/audiovisual.py.

    from models.resnet_blocks import BasicBlock, Bottleneck

    block = BasicBlock(64, 128, stride=2, downsample=proj)  # (B, 64, H, W) -> (B, 128, H/2, W/2)

Written here so that the project needs no torchvision: the only one that imports on this
project's machines needs a CUDA build of torch (a 7.1 GB environment, where the CPU build makes
2.6). The layout, the attribute names (conv1, bn1, ..., downsample) and so the state_dict keys
are those of torchvision's blocks: checkpoints trained with them load unchanged, and a trunk at
width 64 has resnet18's parameter count (tests/test_zoo.py). Bottleneck strides in its 3 x 3 conv
(the "ResNet v1.5" placement torchvision uses).
"""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck"]


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free conv (a BatchNorm follows each), padded to keep the size at stride 1."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """3 x 3 conv - BN - ReLU - 3 x 3 conv - BN, plus the (projected) input, ReLU.
    x (B, inplanes, H, W) -> (B, planes, H / stride, W / stride)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # None: the input already has the output's shape
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1 x 1 reduce - 3 x 3 (strided) - 1 x 1 expand to planes * 4, each with BN, plus the
    (projected) input, ReLU. x (B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)
