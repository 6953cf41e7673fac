"""The ResNet stems' ReLU and 3x3 stride-2 max pool in one compiled pass (numba), for CPU inference.

In torch they are two passes over the stem's output (the in-place ReLU, then the pool as pairwise
maxima of strided views, :func:`fsvos.model.resnet.max_pool_3x3_s2`), and torch's elementwise
maximum of strided channels-last views is slow: for the paper's value encoder (3 objects, 64
channels at 256 x 256, bfloat16, 2 threads) the two took 8.5-9.8 ms per memory frame, for its
key encoder 2.4 ms per frame.  Here one pass reads the map once and writes the pooled map (1.5
and 0.25 ms).

``relu(max_pool(x)) == max_pool(relu(x)) == max(window, 0)`` (the padding never wins), and on
values >= 0 the float order is the order of the bit patterns read as signed integers, while
negative floats read as negative integers: so the kernel takes integer maxima of the float32 or
bfloat16 bit patterns (int32 or int16) with 0, exactly torch's values (a -0.0 comes out as +0.0,
which compares equal; a NaN with its sign bit clear propagates as in torch, one with it set reads
as negative).  Separable: the maximum over each window's rows first, one vectorised loop over the
whole row, then over each window's three columns.  ``_parallel`` splits output rows over numba's
threads (each row written by one thread).
"""

from __future__ import annotations

import numpy as np
import torch

from . import decoder_kernels
from .numba_bf16 import as_numpy, numba

if numba is not None:
    _JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")

    @numba.njit(**_JIT)
    def _relu_pool_rows(x, out, rows0, rows1):
        """Output rows rows0 .. rows1 (flattened b * Ho + i) of out[b, i, j] = max(0, x[b, 2i-1 .. 2i+1,
        2j-1 .. 2j+1]) (rows and columns outside x left out): x (B, H, W, C) and out (B, H/2, W/2, C)
        signed integers (float bit patterns)."""
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        ho, wo = out.shape[1], out.shape[2]
        n = w * c
        zero = x.dtype.type(0)
        rm = np.empty(n, x.dtype)  # max(0, rows 2i-1 .. 2i+1) of each column and channel
        for row in range(rows0, rows1):
            b = row // ho
            i = row - b * ho
            r1, r2 = x[b, 2 * i].ravel(), x[b, 2 * i + 1].ravel()
            if i > 0:
                r0 = x[b, 2 * i - 1].ravel()
                for k in range(n):
                    rm[k] = max(max(r0[k], r1[k]), max(r2[k], zero))
            else:
                for k in range(n):
                    rm[k] = max(r1[k], max(r2[k], zero))
            # each window's columns, as 1-D channel vectors (LLVM vectorises these loops; with the
            # offsets in the index expressions it did not, and ran 25x slower)
            o0, p1, p2 = out[b, i, 0], rm[:c], rm[c:2 * c]
            for k in range(c):  # output column 0: input columns 0, 1
                o0[k] = max(p1[k], p2[k])
            for j in range(1, wo):
                a = (2 * j - 1) * c
                oj, p0, p1, p2 = out[b, i, j], rm[a:a + c], rm[a + c:a + 2 * c], rm[a + 2 * c:a + 3 * c]
                for k in range(c):
                    oj[k] = max(max(p0[k], p1[k]), p2[k])

    @numba.njit(parallel=True, **_JIT)
    def _relu_pool_parallel(x, out, parts):
        rows = out.shape[0] * out.shape[1]
        for p in numba.prange(parts):
            _relu_pool_rows(x, out, p * rows // parts, (p + 1) * rows // parts)

def applies(x: torch.Tensor) -> bool:
    """True where :func:`relu_max_pool` replaces torch's ReLU + pool: where the decoder's compiled
    steps run (:func:`fsvos.model.decoder_kernels.applies`: numba, ``FSVOS_FUSED_DECODER`` not 0,
    autograd off, a CPU float32/bfloat16 map), on a (B, C, H, W) map with even H and W."""
    return decoder_kernels.applies(x) and x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0


def relu_max_pool(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(F.relu(x), 3, stride=2, padding=1) of a (B, C, H, W) float32 or bfloat16 map
    with even H and W, in one pass; the same values as torch's.  Any memory format in
    (channels-last avoids a copy); returns (B, C, H/2, W/2) channels-last in x's dtype."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"relu_max_pool: needs even height and width, got {h} x {w}")
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    out = torch.empty(b, h // 2, w // 2, c, dtype=x.dtype)
    bits = np.int16 if x.dtype == torch.bfloat16 else np.int32  # the float bit patterns, signed
    args = (as_numpy(x_nhwc).view(bits), as_numpy(out).view(bits))
    decoder_kernels.run_rows(_relu_pool_rows, _relu_pool_parallel, args, b * (h // 2))
    return out.permute(0, 3, 1, 2)


def warm_up() -> bool:
    """Compile (or load from numba's cache) the kernel for float32 and bfloat16 in the variant this
    process runs; True if it can run."""
    if numba is None:
        return False
    for dtype in (torch.float32, torch.bfloat16):
        relu_max_pool(torch.zeros(1, 2, 4, 6, dtype=dtype))
    return True
