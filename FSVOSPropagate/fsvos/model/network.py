"""The FSVOS network: STCN's encoders and decoder, sized by an :class:`ArchConfig`.

The default configuration is exactly the XRAVOS/STCN network (ResNet-50 key
encoder, ResNet-18 value encoder, 64-d keys, 512-d values) with the module names
of ``shared/reference/xravos_state_dict.tsv``, so the paper's released
checkpoints load with ``strict=True``.  Smaller configurations keep the same
structure with narrower trunks and decoder (the bundled compact model).

Tensor names carry their stride: ``f16`` (1/16 resolution), ``f8``, ``f4``;
``k16`` is the key, ``v16`` a memory value, ``f16_thin`` the compressed query
feature that the decoder concatenates with the readout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import decoder_kernels
from .blocks import (FeatureFusionBlock, KeyProjection, ResBlock, UpsampleBlock, conv_grey, conv_split,
                     is_channels_last)
from .refine import Refiner
from .resnet import ResNetTrunk


@dataclass(frozen=True)
class ArchConfig:
    """Architecture settings; the defaults are the XRAVOS/STCN network.

    key_block/key_layers/key_width: key encoder trunk (ResNet-50: bottleneck, (3, 4, 6), 64).
    value_block/value_layers/value_width: value encoder trunk (ResNet-18: basic, (2, 2, 2), 64).
    key_dim: channels of keys (64).  value_dim: channels of memory values (512).
    thin_dim: channels of ``f16_thin`` (key_comp output, 512).
    decoder_dims: output channels of compress, up_16_8, up_8_4 (512, 256, 256).
    refine_dim: channels of the full-resolution refiner (:mod:`fsvos.model.refine`); 0 (the
        paper's network, compact v1): none, the logits are the 1/4 ones upsampled.
    """

    key_block: str = "bottleneck"
    key_layers: Tuple[int, int, int] = (3, 4, 6)
    key_width: int = 64
    value_block: str = "basic"
    value_layers: Tuple[int, int, int] = (2, 2, 2)
    value_width: int = 64
    key_dim: int = 64
    value_dim: int = 512
    thin_dim: int = 512
    decoder_dims: Tuple[int, int, int] = (512, 256, 256)
    refine_dim: int = 0

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown architecture settings: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


XRAVOS_ARCH = ArchConfig()

#: The compact architecture of the bundled default model (same method, narrower nets).
#: value_dim + thin_dim == decoder_dims[0], so ``compress`` needs no projection conv; the
#: decoder is 32 wide at 1/8 and 16 at 1/4, where a 3-object frame at 512 px costs most.
COMPACT_ARCH = ArchConfig(
    key_block="basic", key_layers=(1, 1, 1), key_width=32,
    value_block="basic", value_layers=(1, 1, 1), value_width=16,
    key_dim=64, value_dim=64, thin_dim=32, decoder_dims=(96, 32, 16),
)

#: The compact architecture with a full-resolution refiner of 8 channels (thin devices).
COMPACT_REFINE_ARCH = replace(COMPACT_ARCH, refine_dim=8)

#: The compact architecture of the first (preliminary) default weights, kept so that they load.
COMPACT_V0_ARCH = ArchConfig(
    key_block="basic", key_layers=(1, 1, 1), key_width=32,
    value_block="basic", value_layers=(1, 1, 1), value_width=16,
    key_dim=64, value_dim=128, thin_dim=64, decoder_dims=(96, 48, 32),
)


#: The named architectures (``fsvos bench --arch``, training configs' ``arch``, ``fsvos weights info``).
ARCHITECTURES: Dict[str, ArchConfig] = {"xravos": XRAVOS_ARCH, "compact": COMPACT_ARCH,
                                        "compact-refine": COMPACT_REFINE_ARCH}


def arch_name(arch: ArchConfig) -> str:
    """The name of ``arch`` in :data:`ARCHITECTURES`, or "custom"."""
    return next((name for name, a in ARCHITECTURES.items() if a == arch), "custom")


class KeyEncoder(nn.Module):
    """Query/key trunk; returns (f16, f8, f4)."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        t = ResNetTrunk(arch.key_block, arch.key_layers, in_channels=3, width=arch.key_width, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = t.conv1, t.bn1, t.relu, t.maxpool
        self.res2, self.layer2, self.layer3 = t.layer1, t.layer2, t.layer3
        self.channels = t.channels

    def forward(self, f: torch.Tensor):
        """f (B, 3, H, W) normalised, or (B, 1, H, W): a grey plane standing for its 3 replicas."""
        x = conv_grey(self.conv1, f, 0, 3, self.conv1.bias) if f.shape[1] == 1 else self.conv1(f)  # 1/2
        x = self.maxpool.after_relu(self.bn1(x))  # 1/4
        f4 = self.res2(x)  # 1/4
        f8 = self.layer2(f4)  # 1/8
        f16 = self.layer3(f8)  # 1/16
        return f16, f8, f4


class ValueEncoder(nn.Module):
    """Value trunk on (image, object mask, other objects' mask), fused with the key f16."""

    def __init__(self, arch: ArchConfig, key_f16_channels: int):
        super().__init__()
        t = ResNetTrunk(arch.value_block, arch.value_layers, in_channels=5, width=arch.value_width, bias=True)
        self.conv1, self.bn1, self.relu, self.maxpool = t.conv1, t.bn1, t.relu, t.maxpool
        self.layer1, self.layer2, self.layer3 = t.layer1, t.layer2, t.layer3
        self.fuser = FeatureFusionBlock(t.channels[0] + key_f16_channels, arch.value_dim)

    def forward(self, image: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor,
                other_masks: torch.Tensor) -> torch.Tensor:
        x = self.conv1(torch.cat([image, mask, other_masks], dim=1))
        return self.fuser(self._trunk(x), key_f16)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """conv1's output (1/2) -> the trunk's f16 (1/16)."""
        x = self.maxpool.after_relu(self.bn1(x))  # 1/4
        return self.layer3(self.layer2(self.layer1(x)))  # 1/16

    def forward_shared(self, image: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor,
                       other_masks: torch.Tensor) -> torch.Tensor:
        """forward() for K objects of ONE frame, the object-independent work run once.

        image (1, 3, H, W), or (1, 1, H, W): a grey plane standing for its 3 replicas; key_f16
        (1, c16, H/16, W/16); masks, other_masks (K, 1, H, W).  conv1's image channels and the
        fuser's key_f16 channels are convolved once and broadcast over the K objects (convolution is
        linear in its input channels).  Returns (K, value_dim, h, w).
        """
        obj = torch.cat([masks, other_masks], dim=1)  # (K, 2, H, W)
        if is_channels_last(self.conv1.weight):
            obj = obj.contiguous(memory_format=torch.channels_last)
        x = conv_split(self.conv1, obj, image, shared_first=True, shared_channels=3)
        return self.fuser.forward_shared(self._trunk(x), key_f16)


#: the decoder's 1/4-resolution stage runs on chunks of objects whose maps are smaller than this
STAGE4_CHUNK_BYTES = 32 << 20


class Decoder(nn.Module):
    """Decoder on cat(readout, f16_thin) with skips from f8 and f4; returns logits at 1/1."""

    def __init__(self, arch: ArchConfig, f8_channels: int, f4_channels: int):
        super().__init__()
        d16, d8, d4 = arch.decoder_dims
        self.compress = ResBlock(arch.value_dim + arch.thin_dim, d16)
        self.up_16_8 = UpsampleBlock(f8_channels, d16, d8)  # 1/16 -> 1/8
        self.up_8_4 = UpsampleBlock(f4_channels, d8, d4)  # 1/8 -> 1/4
        self.pred = nn.Conv2d(d4, 1, 3, padding=1)

    def forward(self, f16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, with_features: bool = False):
        """Plain STCN decoder: f16 (B, value_dim + thin_dim, h, w), f8/f4 with the same batch B ->
        logits (B, 1, 16h, 16w); with ``with_features`` also the last 1/4 features after their ReLU
        (B, d4, 4h, 4w), which the refiner reads."""
        x = self.compress(f16)
        x = self.up_16_8(f8, x)
        feat4 = F.relu(self.up_8_4(f4, x))
        x = F.interpolate(self.pred(feat4), scale_factor=4, mode="bilinear", align_corners=False)
        return (x, feat4) if with_features else x

    def forward_shared(self, readout: torch.Tensor, f16_thin: torch.Tensor, f8: torch.Tensor,
                       f4: torch.Tensor, with_features: bool = False):
        """Decode K objects of one frame; the object-independent skip convs run once.

        readout: (K, value_dim, h, w); f16_thin: (1, thin_dim, h, w); f8: (1, c8, 2h, 2w);
        f4: (1, c4, 4h, 4w).  Returns logits (K, 1, 16h, 16w) float32; with ``with_features`` also
        the last 1/4 features after their ReLU (K, d4, 4h, 4w), as :meth:`forward`.
        """
        k = readout.shape[0]
        if k > 1:  # the f16_thin half of compress's convs is the same for every object
            x = self.compress.forward_shared_input(readout, f16_thin)
        else:
            x = self.compress(torch.cat([readout, f16_thin], dim=1))
        x = self.up_16_8.fuse(self.up_16_8.skip_conv(f8), x)  # skip (1, ...) broadcasts over K
        skip4 = self.up_8_4.skip_conv(f4)
        # the 1/4 stage in chunks of objects whose maps stay below STAGE4_CHUNK_BYTES (glibc serves
        # larger blocks by mmap: page faults on every use), and peak memory stays flat in K
        per_object = max(x.shape[1], self.pred.in_channels) * f4.shape[-2] * f4.shape[-1] * x.element_size()
        step = max(1, (STAGE4_CHUNK_BYTES - 1) // per_object)
        logits, feats = [], []
        for i in range(0, k, step):
            feat4 = self.up_8_4.fuse(skip4, x[i:i + step], relu_output=True)  # (k, d4, 4h, 4w)
            logits.append(self._pred(feat4))  # (k, 1, 4h, 4w)
            if with_features:
                feats.append(feat4)
        x = logits[0] if len(logits) == 1 else torch.cat(logits)  # upsampled in fp32 whatever the dtype
        if decoder_kernels.applies(x) and x.dtype == torch.float32:
            x = decoder_kernels.upsample4(x)
        else:
            x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        if not with_features:
            return x
        return x, feats[0] if len(feats) == 1 else torch.cat(feats)

    def _pred(self, x: torch.Tensor) -> torch.Tensor:
        """pred(x) in float32 whatever x's dtype: (k, C, H, W) -> (k, 1, H, W)."""
        if decoder_kernels.applies(x):
            return decoder_kernels.conv3x3_to_one(x, self.pred.weight, self.pred.bias)
        return self.pred(x).float()


class FSVOSNet(nn.Module):
    """Key encoder + value encoder + decoder (module names as in XRAVOS/STCN checkpoints)."""

    def __init__(self, arch: ArchConfig = XRAVOS_ARCH):
        super().__init__()
        self.arch = arch
        self.key_encoder = KeyEncoder(arch)
        c16, c8, c4 = self.key_encoder.channels
        self.value_encoder = ValueEncoder(arch, c16)
        self.key_proj = KeyProjection(c16, arch.key_dim)
        self.key_comp = nn.Conv2d(c16, arch.thin_dim, 3, padding=1)
        self.decoder = Decoder(arch, c8, c4)
        self.refiner = Refiner(arch.decoder_dims[2], arch.refine_dim) if arch.refine_dim > 0 else None

    def encode_key(self, frames: torch.Tensor):
        """frames (B, 3, H, W) normalised, or (B, 1, H, W) grey -> k16 (B, key_dim, H/16, W/16), f16_thin, f16, f8, f4."""
        f16, f8, f4 = self.key_encoder(frames)
        return self.key_proj(f16), self.key_comp(f16), f16, f8, f4

    def encode_value(self, frame: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Memory values of K objects in one frame.

        frame (1, 3, H, W), or (1, 1, H, W) grey; f16 (1, c16, H/16, W/16); masks (K, 1, H, W)
        object probabilities.
        Returns v16 (K, value_dim, H/16, W/16).
        """
        k = masks.shape[0]
        others = masks.sum(dim=0, keepdim=True) - masks if k > 1 else torch.zeros_like(masks)
        return self.value_encoder.forward_shared(frame, f16, masks, others)

    def decode(self, readout: torch.Tensor, f16_thin: torch.Tensor, f8: torch.Tensor,
               f4: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Object probabilities (K, 1, H, W) float32 (sigmoid, before aggregation).

        image: the frame as given to :meth:`encode_key` ((1, 1 or 3, H, W)); needed by a network
        with a refiner (``arch.refine_dim > 0``), ignored otherwise.
        """
        if self.refiner is None:
            logits = self.decoder.forward_shared(readout, f16_thin, f8, f4)
        else:
            if image is None:
                raise ValueError("this network refines its logits at full resolution: decode() needs the image")
            logits, feat4 = self.decoder.forward_shared(readout, f16_thin, f8, f4, with_features=True)
            logits = self.refiner(logits, feat4, self.refiner.image_features(image))
        return torch.sigmoid(logits) if torch.is_grad_enabled() else logits.sigmoid_()  # in place: a fresh map
