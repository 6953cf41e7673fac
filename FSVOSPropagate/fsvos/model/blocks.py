"""Network blocks of STCN/XRAVOS (names match the checkpoints)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import decoder_kernels
from .cbam import CBAM
from .winograd import WinogradConv2d, winograd_conv3x3


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(conv1(relu(x)))), with a 3x3 projection if widths differ."""

    def __init__(self, indim: int, outdim: Optional[int] = None):
        super().__init__()
        outdim = indim if outdim is None else outdim
        self.downsample = None if indim == outdim else nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor, relu_output: bool = False) -> torch.Tensor:
        """The block; ``relu_output``: relu of the result (for a consumer that reads only that)."""
        r = conv3x3(self.conv1, x, relu_input=True, relu_output=True)  # relu(conv1(relu(x)))
        skip = x if self.downsample is None else self.downsample(x)
        return conv3x3(self.conv2, r, residual=skip, relu_output=relu_output)  # skip + conv2(r)

    def forward_shared_input(self, x_obj: torch.Tensor, x_shared: torch.Tensor) -> torch.Tensor:
        """forward(cat([x_obj, x_shared.expand(K)], dim=1)) with the shared channels' convs run once.

        x_obj (K, Ca, h, w) per-object channels; x_shared (1, Cb, h, w) object-independent channels.
        """
        k = x_obj.shape[0]
        r = conv_split(self.conv1, x_obj, x_shared, relu_input=True, relu_output=True)
        if self.downsample is not None:
            x = conv_split(self.downsample, x_obj, x_shared)
        elif not torch.is_grad_enabled():  # the identity skip added in two parts, without the cat
            y = conv3x3(self.conv2, r)
            ca = x_obj.shape[1]
            y[:, :ca].add_(x_obj)  # in place on the fresh output: keeps its memory format
            y[:, ca:].add_(x_shared)  # broadcast over K
            return y
        else:
            x = torch.cat([x_obj, x_shared.expand(k, -1, -1, -1)], dim=1)
        return conv3x3(self.conv2, r, residual=x)  # added in place: keeps r's memory format (the cat's may differ)


def conv3x3(conv: nn.Conv2d, x: torch.Tensor, *, relu_input: bool = False, residual: Optional[torch.Tensor] = None,
            relu_output: bool = False) -> torch.Tensor:
    """``relu(conv(relu(x)) + residual)``, each ReLU and the residual on request.

    Where conv runs as Winograd (an inference copy, :class:`WinogradConv2d`) the ReLUs and the
    residual are applied inside its tile transforms, sparing a pass over each map; otherwise they
    are torch operations (in place outside autograd), the same computation and graph as
    ``F.relu(conv(F.relu(x)) + residual)``.  residual: broadcastable to conv's output (batch 1 or
    the same batch).
    """
    if isinstance(conv, WinogradConv2d) and conv.uses_winograd(x):
        return winograd_conv3x3(x, conv.winograd_u, conv.bias, relu_input=relu_input, residual=residual,
                                relu_output=relu_output)
    return _pointwise_after(conv(F.relu(x) if relu_input else x), residual, relu_output)


def _pointwise_after(y: torch.Tensor, residual: Optional[torch.Tensor], relu_output: bool) -> torch.Tensor:
    """y + residual, then relu, as torch operations: in place on y (a fresh convolution output) outside
    autograd, so that y keeps its memory format and no map is allocated."""
    grad = torch.is_grad_enabled()
    if residual is not None:
        y = y + residual if grad else y.add_(residual)
    if relu_output:
        y = F.relu(y) if grad else y.relu_()
    return y


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels-last and not also plain-contiguous (a channels-last
    network's weights and maps; single-channel or 1x1 tensors are both and count as plain)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _cached_weight(conv: nn.Conv2d, name: str, tag: tuple, make) -> torch.Tensor:
    """``make(conv.<name>)`` (detached, in the tensor's memory format), cached on the module until
    the tensor changes (data pointer, in-place version, dtype or memory format)."""
    w = getattr(conv, name)
    fmt = torch.channels_last if is_channels_last(w) else torch.contiguous_format
    key = (w.data_ptr(), w._version, w.dtype, fmt)
    cache = conv.__dict__.setdefault("_fsvos_slices", {})
    hit = cache.get((name,) + tag)
    if hit is not None and hit[0] == key:
        return hit[1]
    out = make(w.detach()).contiguous(memory_format=fmt)
    cache[(name,) + tag] = (key, out)
    return out


def _input_slice(conv: nn.Conv2d, start: int, stop: int, name: str = "weight") -> torch.Tensor:
    """Contiguous copy of conv.<name>[:, start:stop] (same memory format), cached until the tensor
    changes: the weight's input channels start:stop, or those of a WinogradConv2d's transformed
    weight (``name="winograd_u"``, (36, C_in, C_out)); a strided slice would be copied by every
    convolution or bfloat16 batched GEMM that reads it (about 1 ms each for 512 channels)."""
    return _cached_weight(conv, name, (start, stop), lambda w: w[:, start:stop])


def grey_weight(conv: nn.Conv2d, start: int, stop: int) -> torch.Tensor:
    """conv.weight's input channels start:stop summed into one, (C_out, 1, kh, kw): the weight for
    a grey plane that the network sees replicated into those channels.  The replicas are equal
    everywhere, zero padding included, so conv(replicated) == conv(grey, summed weight) up to float
    rounding; the sum is taken in float32 and rounded once to the weight's dtype.  Cached (detached)
    outside autograd; differentiable when gradients are on."""
    def fold(w: torch.Tensor) -> torch.Tensor:
        return w[:, start:stop].float().sum(dim=1, keepdim=True).to(w.dtype)

    w = conv.weight
    if torch.is_grad_enabled() and w.requires_grad:
        return fold(w)
    return _cached_weight(conv, "weight", ("grey", start, stop), fold)


def conv_grey(conv: nn.Conv2d, grey: torch.Tensor, start: int, stop: int,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
    """conv restricted to its input channels start:stop, applied to grey (B, 1, H, W) replicated
    into those channels, as one single-channel convolution (:func:`grey_weight`).  The stem's 7x7
    convolution runs 1.4-2x faster on one channel than on three (oneDNN, 512 px)."""
    if grey.shape[1] != 1:
        raise ValueError(f"conv_grey needs a single-channel input, got {grey.shape[1]} channels")
    if is_channels_last(conv.weight) and grey.stride(1) != 1:
        # a channels-last network: give the single channel channels-last strides, or oneDNN reads
        # it as NCHW and the whole trunk after it runs in NCHW (the encoder about 25% slower)
        grey = torch.empty_like(grey, memory_format=torch.channels_last).copy_(grey)
    return F.conv2d(grey, grey_weight(conv, start, stop), bias, conv.stride, conv.padding)


def conv_split(conv: nn.Conv2d, x_obj: torch.Tensor, x_shared: torch.Tensor, shared_first: bool = False,
               shared_channels: Optional[int] = None, relu_input: bool = False,
               relu_output: bool = False) -> torch.Tensor:
    """conv(cat([x_obj, x_shared broadcast to K], dim=1)) with the x_shared part computed once.

    x_obj (K, Ca, h, w); x_shared (1, Cb, h, w); ``shared_first``: the conv's input channels are
    ordered [x_shared, x_obj] instead.  ``shared_channels``: how many of the conv's input channels
    x_shared stands for (default Cb); a single-channel x_shared standing for more is a grey plane
    replicated into them (:func:`conv_grey`).  Convolution is linear in its input channels, so the
    result equals the convolution of the concatenation up to float rounding.  ``relu_input``,
    ``relu_output``: ReLUs on the concatenation and on the result, as in :func:`conv3x3` (fused into
    a Winograd convolution's tile transforms).
    """
    ca, cb = x_obj.shape[1], x_shared.shape[1] if shared_channels is None else shared_channels
    obj_at, shared_at = ((cb, cb + ca), (0, cb)) if shared_first else ((0, ca), (ca, ca + cb))
    if relu_input:
        x_shared = F.relu(x_shared)  # one image
    if x_shared.shape[1] == cb:
        shared = _conv_input_slice(conv, x_shared, *shared_at, None)
    else:
        shared = conv_grey(conv, x_shared, *shared_at, None)
    # broadcast over K, added in place (or inside the Winograd output transform)
    return _conv_input_slice(conv, x_obj, *obj_at, conv.bias, relu_input=relu_input, residual=shared,
                             relu_output=relu_output)


def _conv_input_slice(conv: nn.Conv2d, x: torch.Tensor, start: int, stop: int, bias: Optional[torch.Tensor],
                      relu_input: bool = False, residual: Optional[torch.Tensor] = None,
                      relu_output: bool = False) -> torch.Tensor:
    """conv restricted to its input channels start:stop, applied to x (those channels only), with the
    pointwise work of :func:`conv3x3`."""
    if isinstance(conv, WinogradConv2d) and conv.uses_winograd(x):
        # float32: a view of the transformed weight (torch.bmm reads the strided slice as fast as a
        # copy, and the copies of the paper's four split convolutions took 324 MB); bfloat16: a
        # cached copy (the strided slice cost about 1 ms more per 512-channel GEMM)
        u = (conv.winograd_u[:, start:stop] if conv.winograd_u.dtype == torch.float32
             else _input_slice(conv, start, stop, "winograd_u"))
        return winograd_conv3x3(x, u, bias, relu_input=relu_input, residual=residual, relu_output=relu_output)
    y = F.conv2d(F.relu(x) if relu_input else x, _input_slice(conv, start, stop), bias, conv.stride, conv.padding)
    return _pointwise_after(y, residual, relu_output)


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

    def forward_shared(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        """forward(x, f16.expand(K)) with block1's f16 half run once: x (K, C, h, w), f16 (1, C16, h, w)."""
        x = self.block1.forward_shared_input(x, f16)
        return self.block2(x + self.attention(x))


class UpsampleBlock(nn.Module):
    """skip_conv(skip) + bilinear x2 upsampling of the coarser map, then a ResBlock."""

    def __init__(self, skip_c: int, up_c: int, out_c: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.out_conv = ResBlock(up_c, out_c)

    def forward(self, skip_f: torch.Tensor, up_f: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.skip_conv(skip_f), up_f)

    def fuse(self, skip_proj: torch.Tensor, up_f: torch.Tensor, relu_output: bool = False) -> torch.Tensor:
        """Second half of forward, for a skip projection already computed (shared by all objects);
        ``relu_output``: relu of the result (:meth:`ResBlock.forward`)."""
        if decoder_kernels.applies(skip_proj, up_f) and skip_proj.dtype == up_f.dtype:
            x = decoder_kernels.upsample_add(skip_proj, up_f)  # one pass, no upsampled map in between
        else:
            x = skip_proj + F.interpolate(up_f, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x, relu_output=relu_output)


class KeyProjection(nn.Module):
    def __init__(self, indim: int, keydim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)
