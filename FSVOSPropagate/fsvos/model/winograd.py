"""Winograd F(4x4, 3x3) convolution for float32 and bfloat16 inference on the CPU.

A 3x3 convolution (stride 1, padding 1) computes each 4x4 output tile from a
6x6 input tile with 36 elementwise products per channel pair instead of 144
(Lavin & Gray 2016): the input tiles and the weights are transformed
(``V = B^T d B``, ``U = G g G^T``), the 36 tile positions become 36 independent
GEMMs over the channels (``M[p] = V[p] @ U[p]``), and the output transform
``Y = A^T M A`` gives the tile.  4x fewer multiplications; oneDNN's direct
convolutions already run at the 2 cores' FMA peak, so this is the only way to
make the paper's wide decoder convolutions faster here.  The tile transforms run
as compiled passes (:mod:`.winograd_kernels`) where numba is available, else as
torch ops.

Rounding: the transforms add about 2.5e-6 relative error per layer in float32
with the interpolation points chosen below (direct convolution: about 3e-7);
the propagator's test holds the whole network's probabilities within 1e-4 of
the direct path.

bfloat16: the same algorithm with bf16 tiles, transformed weights and tile products (the GEMMs
accumulate in float32 but return bf16).  The three roundings, amplified by the transforms, give
about 1.7e-2 relative error per layer against 2.9e-3 for oneDNN's direct bf16 convolution
(random 256-channel layers).  On a trained network this did not show: the bundled compact model
with every 3x3 convolution in bf16 Winograd scored the same J&F as with direct bf16 convolutions
(75.7 on the synthetic validation set, 72.9 on the unseen-object split).  F(2x2, 3x3) would round
less (5.6e-3) but ran slower than the direct convolution here.

Work runs in chunks of tile rows whose transformed tiles hold about 4 Mi elements (16 MiB in
float32, 8 MiB in bfloat16), so the intermediates stay in the 32 MB L3 cache (and below glibc's
mmap threshold).
"""

from __future__ import annotations

from fractions import Fraction
from itertools import accumulate
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

#: interpolation points of the Toom-Cook construction (and the point at infinity).  The usual
#: (0, 1, -1, 2, -2) gives about 8e-6 relative error per layer in float32; (0, 1, -1, 2, -1/2)
#: about 2.5e-6 (Barabasz et al. 2020, "Error analysis and improving the accuracy of Winograd
#: convolution for deep neural networks"), direct convolution about 3e-7.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-1, 2))


def _toom_cook(points, m: int = 4, r: int = 3):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r), n = m + r - 1, from n - 1 finite points and
    infinity, in exact arithmetic; y = A^T [(G g) * (B^T d)] is the valid correlation of d (n)
    with g (r)."""
    n = m + r - 1
    a = list(points)

    def times(p, q):
        out = [Fraction(0)] * (len(p) + len(q) - 1)
        for i, x in enumerate(p):
            for j, y in enumerate(q):
                out[i + j] += x * y
        return out

    def prod_except(j):  # coefficients (ascending) of prod_{l != j} (x - a_l)
        poly = [Fraction(1)]
        for l, al in enumerate(a):
            if l != j:
                poly = times(poly, [-al, Fraction(1)])
        return poly

    at = [[a[j] ** i for j in range(n - 1)] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j in range(n - 1):
        norm = Fraction(1)
        for l in range(n - 1):
            if l != j:
                norm *= a[j] - a[l]
        g.append([a[j] ** k / norm for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt = [prod_except(j) + [Fraction(0)] for j in range(n - 1)] + [prod_except(-1)]
    return tuple(torch.tensor([[float(x) for x in row] for row in mat], dtype=torch.float64)
                 for mat in (at, g, bt))


_AT, _G, _BT = _toom_cook(POINTS)
#: the tile transforms in each dtype they run in (exact in both: every entry is a multiple of 1/8
#: with at most 3 significant bits)
_TRANSFORMS = {dt: (_AT.to(dt), _BT.to(dt)) for dt in (torch.float32, torch.bfloat16)}
#: dtypes with a Winograd path
DTYPES = tuple(_TRANSFORMS)

#: transformed input tiles per chunk, in elements (float32: 16 MiB, bfloat16: 8 MiB).  The same
#: tiles per chunk in both dtypes: float32 ran faster with 16 MiB than with 8 (the paper's network,
#: 3 objects, one process alternating, medians of 4: decoder 502 against 529 ms, key encoder 171
#: against 182, value encoder 286 against 298; 32 MiB slower again), bfloat16 the same at 8-24 MiB
CHUNK_ELEMENTS = 4 << 20
#: transformed input tiles per chunk (bytes) of a float32 map
CHUNK_BYTES = CHUNK_ELEMENTS * 4
#: convolutions with fewer input or output channels stay direct, per dtype (measured here, 2 threads,
#: with the tile kernels of session 18: bfloat16 1.5x at 64 channels, 1.7-1.9x at 96-128, 2-2.7x at
#: 256-512, none at 32; float32 1.45x at 64.  Session 7's kernels gained nothing in bf16 below 192.)
MIN_CHANNELS = {torch.float32: 64, torch.bfloat16: 64}
#: feature maps smaller than this many positions stay direct (transform overhead dominates)
MIN_POSITIONS = 256
#: the compiled tile transforms work on blocks of this many channels (fewer: the torch transforms)
FUSED_MIN_CHANNELS = 16


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """U = G g G^T of a (C_out, C_in, 3, 3) weight -> (36, C_in, C_out) in the weight's dtype (float32
    for other dtypes), tile positions row-major; computed in float64 and rounded once."""
    dtype = weight.dtype if weight.dtype in DTYPES else torch.float32
    u = torch.einsum("ij,ocjk,lk->ilco", _G, weight.detach().double().cpu(), _G)  # (6, 6, C_in, C_out)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(dtype).contiguous().to(weight.device)


def _chunk_torch(xp: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                 bi: int, t0: int, nt: int) -> None:
    """Tile rows t0 .. t0 + nt of image bi with the transforms as torch ops: xp (B, 4 th + 2,
    4 tw + 2, C) zero-padded, out (B, th, 4, tw, 4, C_out)."""
    at, bt = (t.to(xp.device) for t in _TRANSFORMS[xp.dtype])  # no copy on the CPU
    c, tw, c_out = xp.shape[3], out.shape[3], out.shape[5]
    sb, sh, sw, sc = xp.stride()
    # input tiles (6, 6, nt, tw, C): row a, column b of the 6x6 tile of tile (t, x)
    tiles = xp.as_strided((6, 6, nt, tw, c), (sh, sw, 4 * sh, 4 * sw, sc),
                          xp.storage_offset() + bi * sb + 4 * t0 * sh).contiguous()
    v = torch.mm(bt, tiles.view(6, -1)).view(6, 6, nt * tw * c)  # B^T d: over tile rows
    v = torch.matmul(bt, v).view(36, nt * tw, c)  # (B^T d) B: over tile columns
    m = torch.bmm(v, u)  # (36, tiles, C_out): one GEMM per tile position
    y = torch.mm(at, m.view(6, -1)).view(4, 6, -1)  # A^T M
    y = torch.matmul(at, y).view(4, 4, nt, tw, c_out)  # (A^T M) A: (u, v, t, x, C_out)
    dst = out[bi, t0:t0 + nt]  # (nt, 4, tw, 4, C_out)
    if bias is None:
        dst.copy_(y.permute(2, 0, 3, 1, 4))
    else:
        torch.add(y.permute(2, 0, 3, 1, 4), bias, out=dst)


def _kernels():
    """The compiled transforms (imported on first use: that module builds on this one)."""
    from . import winograd_kernels
    return winograd_kernels


def _chunks(images: int, tile_rows: int, rows: int) -> List[List[Tuple[int, int, int]]]:
    """The tile rows of all images, image after image, cut into chunks of ``rows`` tile rows (the
    last may be shorter): lists of (image, first tile row, tile rows).  A chunk may span the end
    of one image and the start of the next, so the tiles of small maps (the paper's decoder at
    1/16: 8 x 8 tiles per object) go through one GEMM per tile position for all images instead
    of one each, and no chunk of a larger map is a short remainder: the 3-object 512-channel
    convolutions at 32 x 32 took 25 instead of 34-39 ms (bf16)."""
    chunks: List[List[Tuple[int, int, int]]] = [[]]
    room = rows
    for bi in range(images):
        t0 = 0
        while t0 < tile_rows:
            if room == 0:
                chunks.append([])
                room = rows
            nt = min(room, tile_rows - t0)
            chunks[-1].append((bi, t0, nt))
            t0 += nt
            room -= nt
    return chunks


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     chunk_bytes: Optional[int] = None, fused: Optional[bool] = None, *, relu_input: bool = False,
                     residual: Optional[torch.Tensor] = None, relu_output: bool = False) -> torch.Tensor:
    """conv2d(x, w, bias, stride=1, padding=1) for u = winograd_weight(w), with optional pointwise
    work fused into the tile transforms:
    ``relu(conv2d(relu(x), w, bias) + residual)``, each of the three parts on request.

    x: (B, C_in, H, W) float32 or bfloat16, any memory format (channels-last avoids a copy); u:
    (36, C_in, C_out) in x's dtype, may be a slice along C_in; ``relu_input``: convolve relu(x)
    (read on the fly, x unchanged); ``residual``: (B or 1, C_out, H, W) in x's dtype, added to the
    convolution (one map for all B images when its batch is 1; channels-last avoids a copy);
    ``relu_output``: a ReLU on the result; ``chunk_bytes``: the transformed tiles of one chunk
    (default :data:`CHUNK_ELEMENTS` elements).  Returns (B, C_out, H, W) in x's dtype and channels-last
    format.  In float32 the result is bitwise that of the separate operations; in bfloat16 the
    residual sum is rounded once instead of twice.  ``fused``: the tile transforms as compiled passes
    (:mod:`.winograd_kernels`; default: on the CPU when numba is available and both channel counts
    are at least FUSED_MIN_CHANNELS, which True requires) or as torch ops (which run the pointwise
    parts as separate torch operations).
    """
    if x.dtype not in DTYPES or u.dtype != x.dtype:
        raise TypeError(f"winograd_conv3x3: input {x.dtype} and transformed weight {u.dtype} must both "
                        f"be one of {DTYPES}")
    b, c, h, w = x.shape
    c_out = u.shape[2]
    if residual is not None and (residual.dtype != x.dtype or residual.dim() != 4 or residual.shape[0] not in (1, b)
                                 or tuple(residual.shape[1:]) != (c_out, h, w)):
        raise ValueError(f"winograd_conv3x3: residual {tuple(residual.shape)} {residual.dtype} does not fit the "
                         f"output ({b}, {c_out}, {h}, {w}) {x.dtype}")
    th, tw = -(-h // 4), -(-w // 4)  # tiles; H, W padded up to multiples of 4, the excess cropped
    if chunk_bytes is None:
        chunk_bytes = CHUNK_ELEMENTS * x.element_size()
    rows = max(1, chunk_bytes // (36 * tw * max(c, c_out) * x.element_size()))
    compilable = x.device.type == "cpu" and min(c, c_out) >= FUSED_MIN_CHANNELS
    if fused is None:
        fused = compilable and _kernels().available()
    elif fused and not compilable:
        raise ValueError(f"winograd_conv3x3: the compiled transforms need the CPU and >= {FUSED_MIN_CHANNELS} "
                         f"input and output channels, not {x.device}, {c} -> {c_out}")
    if fused:  # one compiled pass per transform, on the unpadded map, into the cropped output
        kernels = _kernels()
        x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): no copy if x is channels-last
        res_nhwc = None if residual is None else residual.permute(0, 2, 3, 1).contiguous()
        out = torch.empty(b, h, w, c_out, dtype=x.dtype)
        bias32 = (torch.zeros(c_out) if bias is None else bias.detach()).float().contiguous()
        for chunk in _chunks(b, th, rows):
            starts = list(accumulate((nt * tw for _, _, nt in chunk), initial=0))  # each part's first tile
            v = torch.empty(36, starts[-1], c, dtype=x.dtype)  # (36, tiles, C)
            for (bi, t0, nt), start in zip(chunk, starts):
                kernels.input_transform(x_nhwc, v, bi, t0, nt, start, relu=relu_input)
            m = torch.bmm(v, u)  # (36, tiles, C_out): one GEMM per tile position
            for (bi, t0, nt), start in zip(chunk, starts):
                kernels.output_transform(m, bias32, out, bi, t0, nt, start, residual=res_nhwc, relu=relu_output)
        return out.permute(0, 3, 1, 2)  # (B, C_out, H, W), channels-last strides
    if relu_input:
        x = torch.relu(x)
    # (B, 4 th + 2, 4 tw + 2, C) zero-padded, channels last: only the border is zeroed (F.pad
    # zero-fills the whole tensor first)
    xp = torch.empty(b, 4 * th + 2, 4 * tw + 2, c, dtype=x.dtype, device=x.device)
    xp[:, 0].zero_()
    xp[:, h + 1:].zero_()
    xp[:, 1:h + 1, 0].zero_()
    xp[:, 1:h + 1, w + 1:].zero_()
    xp[:, 1:h + 1, 1:w + 1].copy_(x.permute(0, 2, 3, 1))
    out = torch.empty(b, th, 4, tw, 4, c_out, dtype=x.dtype, device=x.device)
    for bi in range(b):
        for t0 in range(0, th, rows):
            _chunk_torch(xp, u, bias, out, bi, t0, min(rows, th - t0))
    out = out.view(b, 4 * th, 4 * tw, c_out)
    if 4 * th != h or 4 * tw != w:
        out = out[:, :h, :w].contiguous()
    out = out.permute(0, 3, 1, 2)  # (B, C_out, H, W), channels-last strides
    if residual is not None:
        out.add_(residual)
    return out.relu_() if relu_output else out


class WinogradConv2d(nn.Conv2d):
    """A 3x3/1 convolution that runs as Winograd F(4x4, 3x3) on float32 or bfloat16 inputs of its
    weight's dtype, without autograd, on maps of at least MIN_POSITIONS positions, and as the plain
    convolution otherwise.  For inference copies only: the transformed weight is computed once, from
    the weight (and in its dtype) at creation."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "WinogradConv2d":
        """The same convolution, sharing conv's weight and bias."""
        new = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new.register_buffer("winograd_u", winograd_weight(conv.weight), persistent=False)
        return new

    def uses_winograd(self, x: torch.Tensor) -> bool:
        return (x.dtype in DTYPES and self.winograd_u.dtype == x.dtype
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and x.shape[-2] * x.shape[-1] >= MIN_POSITIONS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_winograd(x):
            return winograd_conv3x3(x, self.winograd_u, self.bias)
        return super().forward(x)


def eligible(conv: nn.Module, min_channels: Optional[int] = None) -> bool:
    """A plain 3x3 convolution, stride 1, padding 1, no groups or dilation, with float32 or bfloat16
    weights, wide enough (``min_channels``; None: MIN_CHANNELS of its weight's dtype)."""
    if not (type(conv) is nn.Conv2d and conv.weight.dtype in DTYPES):
        return False
    width = MIN_CHANNELS[conv.weight.dtype] if min_channels is None else min_channels
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels >= width and conv.out_channels >= width)


def enable_winograd(model: nn.Module, min_channels: Optional[int] = None, exclude: Sequence[nn.Module] = ()) -> int:
    """Replace every eligible convolution of an inference copy by a WinogradConv2d (in place),
    except inside the ``exclude`` modules; returns how many were replaced.  Cast the model to its
    inference dtype first: the transformed weights are made in the weights' dtype and the width
    threshold depends on it.  Each keeps a transformed weight 4x the size of its weight."""
    skip = {id(m) for e in exclude for m in e.modules()}
    swaps = [(parent, name, child) for parent in model.modules() if id(parent) not in skip
             for name, child in parent.named_children() if eligible(child, min_channels)]
    for parent, name, child in swaps:
        setattr(parent, name, WinogradConv2d.from_conv(child))
    return len(swaps)
