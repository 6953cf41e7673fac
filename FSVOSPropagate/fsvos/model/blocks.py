"""Network blocks of STCN/XRAVOS (names match the checkpoints)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cbam import CBAM


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(conv1(relu(x)))), with a 3x3 projection if widths differ."""

    def __init__(self, indim: int, outdim: Optional[int] = None):
        super().__init__()
        outdim = indim if outdim is None else outdim
        self.downsample = None if indim == outdim else nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.relu(x))
        r = self.conv2(F.relu(r))
        if self.downsample is not None:
            x = self.downsample(x)
        return x + r


class FeatureFusionBlock(nn.Module):
    """Fuses the value trunk's f16 with the key encoder's f16: ResBlock -> CBAM -> ResBlock."""

    def __init__(self, indim: int, outdim: int):
        super().__init__()
        self.block1 = ResBlock(indim, outdim)
        self.attention = CBAM(outdim)
        self.block2 = ResBlock(outdim, outdim)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, f16], dim=1))
        return self.block2(x + self.attention(x))


class UpsampleBlock(nn.Module):
    """skip_conv(skip) + bilinear x2 upsampling of the coarser map, then a ResBlock."""

    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip_f: torch.Tensor, up_f: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.skip_conv(skip_f), up_f)

    def fuse(self, skip_proj: torch.Tensor, up_f: torch.Tensor) -> torch.Tensor:
        """Second half of forward, for a skip projection already computed (shared by all objects)."""
        x = skip_proj + F.interpolate(up_f, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class KeyProjection(nn.Module):
    def __init__(self, indim: int, keydim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)
