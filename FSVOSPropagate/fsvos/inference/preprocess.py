"""Turning frames and masks into network inputs, and back.

The XRAVOS weights expect: an 8-bit frame scaled to [0, 1], normalised as
(x - 0.5) / 0.5, grey replicated to 3 channels, native resolution, zero-padded
(after normalisation) to a multiple of 16, centred as STM's ``pad_divide_by``.
The engine passes the grey plane once; the stems' convolutions fold the 3
replicas into one channel (exact up to float rounding).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from . import pixel_kernels

Pad = Tuple[int, int, int, int]  # (left, right, top, bottom)


def pad_for(h: int, w: int, d: int = 16) -> Pad:
    """Centred padding that makes (h, w) multiples of d (STM's pad_divide_by)."""
    nh = h + (d - h % d) % d
    nw = w + (d - w % d) % d
    lh, lw = (nh - h) // 2, (nw - w) // 2
    return (lw, nw - w - lw, lh, nh - h - lh)


def frames_to_input(frames_u8: torch.Tensor, pad: Pad, dtype: torch.dtype = torch.float32,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    channels: int = 3) -> torch.Tensor:
    """uint8 (B, H, W) -> (B, channels, H', W') normalised (in float32) and padded, in ``dtype``
    and ``memory_format``.  ``channels`` 3: the grey plane is cast first and replicated in one
    copy; 1: the grey plane alone, which the network's stems read as its 3 replicas
    (:func:`fsvos.model.blocks.conv_grey`; the same result, one third of the stem's input)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    x = frames_u8.float().div_(255.0).sub_(0.5).div_(0.5)
    x = F.pad(x[:, None], pad)  # (B, 1, H', W')
    # a fresh tensor in the memory format's strides, also for one channel: there (B, 1, H', W') is
    # contiguous both ways, and oneDNN reads plain strides as NCHW and answers in NCHW
    out = torch.empty((x.shape[0], channels, *x.shape[2:]), dtype=dtype, memory_format=memory_format)
    return out.copy_(x.expand(-1, channels, -1, -1))


def pad_masks(masks: torch.Tensor, pad: Pad) -> torch.Tensor:
    """(K, H, W) -> (K, 1, H', W') zero-padded."""
    return F.pad(masks[:, None].float(), pad)


def unpad(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Crop the padding off the last two dims."""
    lw, rw, lh, rh = pad
    h, w = x.shape[-2:]
    return x[..., lh:h - rh, lw:w - rw]


def aggregate(prob: torch.Tensor) -> torch.Tensor:
    """STM soft aggregation: object probabilities (K, ...) -> (K+1, ...) with background first.

    softmax(log(q / (1 - q))) over [prod(1 - p), p_1..p_K] clamped to [1e-7, 1 - 1e-7], computed
    as the normalised odds q / (1 - q) (the same function, fewer passes over the pixels; products
    over the small first dim as a loop, which is much faster than a strided reduction on the CPU).
    """
    if pixel_kernels.usable(prob):
        return pixel_kernels.aggregate(prob)  # one compiled pass, the same float32 arithmetic
    bg = 1 - prob[0]
    for i in range(1, prob.shape[0]):
        bg.mul_(1 - prob[i])
    q = torch.cat([bg[None], prob], 0).clamp_(1e-7, 1 - 1e-7)  # (K+1, ...), a new tensor
    odds = q.div_(1 - q)  # in place: one (K+1)-map temporary fewer
    total = odds[0].clone()
    for i in range(1, odds.shape[0]):
        total += odds[i]
    return odds.mul_(total.reciprocal_())  # one division per pixel instead of K+1
