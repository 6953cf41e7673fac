"""ResNet trunks written here (torchvision cannot be imported with the CPU wheel).

Two flavours share one class:

* the key encoder's trunk has torchvision's layout and names (bias-free convs,
  stride on the 3x3 of a bottleneck, ``downsample = Sequential(conv1x1, bn)``), so
  that ImageNet/STCN/XRAVOS weights load unchanged;
* the value encoder's trunk is STCN's ``mod_resnet``: every conv HAS a bias and
  the first conv takes extra input channels (the masks).

Only the stem and layers 1-3 exist (stride 16 is as deep as the method goes).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import pool_kernels


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision (a fresh map: 4-5 ms per paper's frame in fp32)
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision
        return self.relu(out)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 3, stride=2, padding=1) of a (B, C, H, W) map with even H and W, as
    pairwise maxima of strided views (exactly the same values, the input's memory format).

    Output (i, j) is the maximum over input rows 2i-1..2i+1 and columns 2j-1..2j+1 (row/column -1
    is padding).  torch's max_pool2d also writes an int64 index map and does not vectorise on
    channels-last bfloat16; this is 3-5x faster on the CPU.  Not for autograd (ties).
    """
    w, h = x.shape[-1], x.shape[-2]
    a = torch.maximum(x[..., 0::2], x[..., 1::2])  # columns 2j, 2j+1: (B, C, H, W/2)
    torch.maximum(a[..., 1:], x[..., 1:w - 1:2], out=a[..., 1:])  # column 2j-1
    b = torch.maximum(a[..., 0::2, :], a[..., 1::2, :])  # rows 2i, 2i+1: (B, C, H/2, W/2)
    torch.maximum(b[..., 1:, :], a[..., 1:h - 1:2, :], out=b[..., 1:, :])  # row 2i-1
    return b


class StemMaxPool(nn.MaxPool2d):
    """The ResNet stem's 3x3 stride-2 max pool; without autograd, on even-sized maps, computed by
    :func:`max_pool_3x3_s2` (same values)."""

    def __init__(self):
        super().__init__(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        even = x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0
        if even and not (torch.is_grad_enabled() and x.requires_grad):
            return max_pool_3x3_s2(x)
        return super().forward(x)

    def after_relu(self, x: torch.Tensor) -> torch.Tensor:
        """forward(relu(x)): on the CPU without autograd one compiled pass
        (:func:`fsvos.model.pool_kernels.relu_max_pool`, the same values), else torch's in-place
        ReLU (as the stems' ``nn.ReLU(inplace=True)``) and the pool."""
        if pool_kernels.applies(x):
            return pool_kernels.relu_max_pool(x)
        return self(F.relu(x, inplace=True))


class ResNetTrunk(nn.Module):
    """Stem + layer1..layer3 of a ResNet.

    Parameters
    ----------
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50).
    layers: number of blocks in layer1..layer3, e.g. (3, 4, 6) for ResNet-50.
    in_channels: input channels of the stem conv (3 for images, 5 for image + 2 masks).
    width: planes of layer1 (64 in the standard nets); layer2/3 double it each.
    bias: give every conv a bias (STCN's value encoder) or none (torchvision).

    ``forward`` returns (f16, f8, f4): features at strides 16, 8 and 4.
    """

    def __init__(self, block: str, layers: Sequence[int], in_channels: int = 3,
                 width: int = 64, bias: bool = False):
        super().__init__()
        block_cls: Type[Union[BasicBlock, Bottleneck]] = BLOCKS[block]
        self.bias = bias
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = StemMaxPool()
        self.layer1 = self._make_layer(block_cls, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block_cls, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block_cls, width * 4, layers[2], stride=2)
        self.channels = tuple(width * m * block_cls.expansion for m in (4, 2, 1))  # (c16, c8, c4)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block_cls, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_cls.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block_cls.expansion, 1, stride=stride, bias=self.bias),
                nn.BatchNorm2d(planes * block_cls.expansion),
            )
        layers: List[nn.Module] = [block_cls(self.inplanes, planes, stride, downsample, bias=self.bias)]
        self.inplanes = planes * block_cls.expansion
        for _ in range(1, blocks):
            layers.append(block_cls(self.inplanes, planes, bias=self.bias))
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # stride 4
