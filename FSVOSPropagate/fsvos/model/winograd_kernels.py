"""The tile transforms of the Winograd F(4x4, 3x3) convolution in compiled loops (numba), CPU.

In torch each transform is several passes over the transformed tiles: a zero-padded copy of the
map, a gather of the overlapping 6x6 tiles, two small GEMMs (over the tile rows, then columns),
and a scatter with the bias.  Here each transform is one pass: the input kernel reads the
unpadded channels-last map (the padding is implicit) and writes the 36 transformed values of
every tile and channel; the output kernel reads the 36 tile products and writes the 4x4 outputs
plus the bias (and optionally a residual and a ReLU), cropped to the map.

Each step handles one tile and 16 channels entirely in vector registers: it loads the 36 input
vectors, applies ``B^T d B`` (or ``A^T M A``) with the coefficients of :mod:`.winograd` as
constants, and stores the 36 (or 16) results (:func:`_input_block`, :func:`_output_block`,
written as LLVM IR with :mod:`.simd_ir`: a numba loop over all 36 positions does not vectorise).
The previous kernels, numba loops over the channels generated per tile row and column, went
through a float32 scratch of 36 channel rows per tile (36-72 KB, more than the 32 KB L1 cache).
The last block of a tile starts 16 channels before its end, overlapping the one before when the
channel count is not a multiple of 16 (its channels are computed twice, to the same values): the
kernels need at least 16 input and output channels.  They take addresses and byte strides, so
any layout with contiguous channels works.  Measured on this project's 2-core machine, the
paper's decoder (3 objects, 512 px) in one process alternating with the previous kernels, the
same outputs bitwise: bf16 265.7 against 292.4 ms (medians of 20), 280 against 311 ms (of 30);
fp32 618 against 624 ms.

bfloat16 maps are read and written as their 16-bit patterns: transformed in float32 and rounded
once to nearest even, as torch rounds, so in bf16 the transforms add no rounding beyond storing V
and the output.  The arithmetic is that of the formulas written out in float32, operation for
operation (no fused multiply-adds): the results equal those of the previous numba loops bitwise.

Each kernel has a ``_parallel`` variant that cuts the chunk's tiles into ranges run on numba's
threads (each tile written by one thread: bitwise the one-thread result, tested), used where
:func:`fsvos.numba_threads.threads` allows it (numba's OpenMP layer; see there why).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import numpy as np
import torch

from ..numba_threads import threads_for_loop
from .numba_bf16 import numba
from .winograd import _AT, _BT, FUSED_MIN_CHANNELS

#: tile ranges per thread in the parallel kernels
_PARTS_PER_THREAD = 2
#: channels per vector step; the kernels need at least this many input and output channels
LANES = FUSED_MIN_CHANNELS


def available() -> bool:
    """True if the compiled transforms can run (numba importable, ``FSVOS_FUSED_WINOGRAD`` not 0)."""
    return numba is not None and os.environ.get("FSVOS_FUSED_WINOGRAD", "1") != "0"


if numba is not None:
    from numba.core import types
    from numba.extending import intrinsic

    from . import simd_ir as ir_

    assert ir_.LANES == LANES
    _JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    _BT_ROWS, _AT_ROWS = _BT.tolist(), _AT.tolist()

    def _element(like) -> Optional[bool]:
        """At typing time: True for bfloat16 bits (uint16), False for float32, None otherwise."""
        if isinstance(like, types.Array) and like.dtype in (types.uint16, types.float32):
            return like.dtype == types.uint16
        return None

    @intrinsic
    def _input_block(typingctx, like, src, dst, offset, floor):
        """dst[k] + offset <- (B^T d B)[k] for the 16 channels at src[p] + offset of the tile's 36
        input positions p (row-major; an address of zeros for the padding), each read as
        max(value, floor).  like: an empty array of the element type (uint16: bfloat16 bits);
        src, dst: (36,) int64 addresses; offset: bytes."""
        bf16 = _element(like)
        if bf16 is None:
            return None
        sig = types.void(like, src, dst, types.int64, types.float32)

        def codegen(context, builder, signature, args):
            src_at = context.make_array(signature.args[1])(context, builder, args[1]).data
            dst_at = context.make_array(signature.args[2])(context, builder, args[2]).data
            offset, lo = args[3], ir_.splat_value(builder, args[4])
            e = []  # e[a][k] = (d B)[a, k]: tile row a, along the columns
            for a in range(6):
                d = [ir_.maximum(builder, ir_.load(builder, ir_.address(builder, src_at, 6 * a + x, offset), bf16), lo)
                     for x in range(6)]
                e.append([ir_.combine(builder, _BT_ROWS[k], d) for k in range(6)])
            for k in range(6):  # tile column k, along the rows
                g = [e[a][k] for a in range(6)]
                for k1 in range(6):
                    ir_.store(builder, ir_.combine(builder, _BT_ROWS[k1], g),
                              ir_.address(builder, dst_at, 6 * k1 + k, offset), bf16)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _output_block(typingctx, like, src, dst, res, bias, offset, floor):
        """dst[q] + offset <- max((A^T M A)[q] + bias + residual[q], floor) for the 16 channels at
        src[p] + offset of the tile's 36 products p and its 16 outputs q (row-major), summed in float32
        and rounded once.  res: (16,) int64 addresses of the residual (an address of zeros where
        there is none); bias: address of the float32 bias (its own offset: 4 bytes a channel)."""
        bf16 = _element(like)
        if bf16 is None:
            return None
        sig = types.void(like, src, dst, res, types.int64, types.int64, types.float32)

        def codegen(context, builder, signature, args):
            src_at, dst_at, res_at = (context.make_array(signature.args[i])(context, builder, args[i]).data
                                      for i in (1, 2, 3))
            bias, offset, lo = args[4], args[5], ir_.splat_value(builder, args[6])
            bias_offset = builder.shl(offset, ir_.I64(1)) if bf16 else offset
            bc = ir_.load(builder, builder.add(bias, bias_offset), False)
            f = []  # f[a][k] = (M A)[a, k]: product row a, along the columns
            for a in range(6):
                d = [ir_.load(builder, ir_.address(builder, src_at, 6 * a + x, offset), bf16) for x in range(6)]
                f.append([ir_.combine(builder, _AT_ROWS[k], d) for k in range(4)])
            for k in range(4):  # output column k, along the rows, plus the bias and the residual
                g = [f[a][k] for a in range(6)]
                for k1 in range(4):
                    y = ir_.load(builder, ir_.address(builder, res_at, 4 * k1 + k, offset), bf16)
                    s = builder.fadd(builder.fadd(ir_.combine(builder, _AT_ROWS[k1], g), bc), y)
                    ir_.store(builder, ir_.maximum(builder, s, lo), ir_.address(builder, dst_at, 4 * k1 + k, offset),
                              bf16)
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(inline="always", **_JIT)
    def _input_tiles(like, x, sxb, sxh, sxw, h, w, c, v, svk, svt, zero, b, t0, start, lo, tt0, tt1):
        """Chunk tiles tt0..tt1-1 of the input transform (see input_transform); addresses and byte
        strides: x (B, H, W, C) map of image b, v (36, tiles, C), zero: C zeros."""
        step = LANES * like.itemsize
        last = (c - LANES) * like.itemsize  # the last block's offset (it may overlap the one before)
        tw = (w + 3) // 4
        src = np.empty(36, np.int64)
        dst = np.empty(36, np.int64)
        for tt in range(tt0, tt1):
            i = tt // tw
            r = 4 * (t0 + i) - 1  # the 6x6 window starts one row and column before the 4x4 tile
            q = 4 * (tt - i * tw) - 1
            for a in range(6):
                for k in range(6):
                    inside = 0 <= r + a < h and 0 <= q + k < w
                    src[6 * a + k] = x + b * sxb + (r + a) * sxh + (q + k) * sxw if inside else zero
            for k in range(36):
                dst[k] = v + k * svk + (start + tt) * svt
            for offset in range(0, last, step):
                _input_block(like, src, dst, offset, lo)
            _input_block(like, src, dst, last, lo)

    @numba.njit(**_JIT)
    def _input_kernel(like, x, sxb, sxh, sxw, h, w, c, v, svk, svt, zero, b, t0, nt, start, lo):
        """_input_tiles over the chunk's nt tile rows, on one thread."""
        _input_tiles(like, x, sxb, sxh, sxw, h, w, c, v, svk, svt, zero, b, t0, start, lo, 0, nt * ((w + 3) // 4))

    @numba.njit(parallel=True, **_JIT)
    def _input_kernel_parallel(like, x, sxb, sxh, sxw, h, w, c, v, svk, svt, zero, b, t0, nt, start, lo, parts):
        """_input_tiles on numba's threads, the chunk's tiles cut into ``parts`` ranges."""
        tiles = nt * ((w + 3) // 4)
        for p in numba.prange(parts):
            _input_tiles(like, x, sxb, sxh, sxw, h, w, c, v, svk, svt, zero, b, t0, start, lo,
                         p * tiles // parts, (p + 1) * tiles // parts)

    @numba.njit(inline="always", **_JIT)
    def _output_tiles(like, m, smk, smt, bias, res, srh, srw, has_res, out, soh, sow, h, w, c, zero, sink, t0,
                      start, lo, tt0, tt1):
        """Chunk tiles tt0..tt1-1 of the output transform (see output_transform); addresses and byte
        strides: m (36, tiles, C), out (H, W, C) and res (H, W, C) of the image, bias (C,) float32,
        zero: C zeros, sink: C elements that take the outputs beyond H or W."""
        step = LANES * like.itemsize
        last = (c - LANES) * like.itemsize
        tw = (w + 3) // 4
        src = np.empty(36, np.int64)
        dst = np.empty(16, np.int64)
        add = np.empty(16, np.int64)
        for tt in range(tt0, tt1):
            i = tt // tw
            r = 4 * (t0 + i)
            q = 4 * (tt - i * tw)
            for k in range(36):
                src[k] = m + k * smk + (start + tt) * smt
            for k1 in range(4):
                for k in range(4):
                    inside = r + k1 < h and q + k < w
                    dst[4 * k1 + k] = out + (r + k1) * soh + (q + k) * sow if inside else sink
                    add[4 * k1 + k] = res + (r + k1) * srh + (q + k) * srw if inside and has_res else zero
            for offset in range(0, last, step):
                _output_block(like, src, dst, add, bias, offset, lo)
            _output_block(like, src, dst, add, bias, last, lo)

    @numba.njit(**_JIT)
    def _output_kernel(like, m, smk, smt, bias, res, srh, srw, has_res, out, soh, sow, h, w, c, zero, sink, t0, nt,
                       start, lo):
        """_output_tiles over the chunk's nt tile rows, on one thread."""
        _output_tiles(like, m, smk, smt, bias, res, srh, srw, has_res, out, soh, sow, h, w, c, zero, sink, t0, start,
                      lo, 0, nt * ((w + 3) // 4))

    @numba.njit(parallel=True, **_JIT)
    def _output_kernel_parallel(like, m, smk, smt, bias, res, srh, srw, has_res, out, soh, sow, h, w, c, zero, sink,
                                sink_stride, t0, nt, start, lo, parts):
        """_output_tiles on numba's threads, the chunk's tiles cut into ``parts`` ranges (each with its
        own sink, sink_stride bytes apart)."""
        tiles = nt * ((w + 3) // 4)
        for p in numba.prange(parts):
            _output_tiles(like, m, smk, smt, bias, res, srh, srw, has_res, out, soh, sow, h, w, c, zero,
                          sink + p * sink_stride, t0, start, lo, p * tiles // parts, (p + 1) * tiles // parts)


_LIKE = {torch.float32: "float32", torch.bfloat16: "uint16"}


@functools.lru_cache(maxsize=None)
def _like(dtype: torch.dtype):
    """The empty array that selects a kernel's element type (bfloat16: its bits as uint16)."""
    return np.empty(0, _LIKE[dtype])


@functools.lru_cache(maxsize=64)
def _zeros(dtype: torch.dtype, channels: int) -> torch.Tensor:
    """``channels`` zeros the kernels read for the padding and a missing residual (never written)."""
    return torch.zeros(channels, dtype=dtype)


def _strides(t: torch.Tensor, dims) -> tuple:
    """Byte strides of the given dimensions."""
    size = t.element_size()
    return tuple(t.stride(d) * size for d in dims)


def _check_channels(name: str, t: torch.Tensor, channels: int, dtype: torch.dtype) -> None:
    if t.dtype != dtype or t.shape[-1] != channels or t.stride(-1) != 1 or t.device.type != "cpu":
        raise ValueError(f"{name}: {tuple(t.shape)} {t.dtype} on {t.device}, needs {channels} contiguous channels "
                         f"last, {dtype}, on the CPU")


def _check_chunk(name: str, tiles: torch.Tensor, images: int, h: int, w: int, b: int, t0: int, nt: int,
                 start: int) -> None:
    """The kernels write through raw addresses: refuse a chunk outside its arrays."""
    th, tw = -(-h // 4), -(-w // 4)
    if not (tiles.dim() == 3 and tiles.shape[0] == 36 and 0 <= b < images and 0 <= t0 and nt >= 0
            and t0 + nt <= th and 0 <= start and start + nt * tw <= tiles.shape[1]):
        raise ValueError(f"{name}: tile rows {t0}..{t0 + nt} of image {b} (of {images}, {th} x {tw} tiles) at "
                         f"row {start} do not fit {tuple(tiles.shape)}")


def _parts(parts: Optional[int]) -> int:
    """Tile ranges for the next kernel: ``parts`` (run by the parallel kernel), or by default 2 per
    thread where the loops run on several threads (:func:`threads_for_loop`), else 0: the one-thread
    kernel."""
    n = threads_for_loop()
    if parts is not None:
        if parts < 1:
            raise ValueError(f"parts must be at least 1, not {parts}")
        return parts
    return n * _PARTS_PER_THREAD if n > 1 else 0


def input_transform(x: torch.Tensor, v: torch.Tensor, b: int, t0: int, nt: int, start: int = 0,
                    relu: bool = False, parts: Optional[int] = None) -> None:
    """v[:, start : start + nt * tw] = B^T d B of the tiles of tile rows t0 .. t0 + nt of image b.

    x: (B, H, W, C) channels-last map, not padded (the convolution's zero padding and the excess
    of the last tiles read as zeros), channels contiguous, C >= 16; v: (36, >= start + nt * tw, C)
    with contiguous channels (the 36 matrices may lie any distance apart), x's dtype (float32 or
    bfloat16), tw = ceil(W / 4); tile (i, j) is row ``start + i * tw + j`` of v (a chunk may hold
    the tiles of several images one after the other).  ``relu``: transform relu(x) instead (read
    on the fly; x is not changed).  ``parts``: cut the tiles into this many ranges run in parallel
    (default: see :func:`_parts`); the result does not depend on it."""
    c = x.shape[3]
    if c < LANES or x.dtype not in _LIKE:
        raise ValueError(f"input_transform: needs float32 or bfloat16 with >= {LANES} channels, not {x.dtype}, {c}")
    _check_channels("input_transform: x", x, c, x.dtype)
    _check_channels("input_transform: v", v, c, x.dtype)
    _check_chunk("input_transform", v, x.shape[0], x.shape[1], x.shape[2], b, t0, nt, start)
    like, zero = _like(x.dtype), _zeros(x.dtype, c)
    args = ((like, x.data_ptr()) + _strides(x, (0, 1, 2)) + (x.shape[1], x.shape[2], c, v.data_ptr())
            + _strides(v, (0, 1)) + (zero.data_ptr(), b, t0, nt, start, 0.0 if relu else -math.inf))
    parts = _parts(parts)
    if parts:
        _input_kernel_parallel(*args, parts)
    else:
        _input_kernel(*args)


def output_transform(m: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, b: int, t0: int, nt: int,
                     start: int = 0, residual: Optional[torch.Tensor] = None, relu: bool = False,
                     parts: Optional[int] = None) -> None:
    """out[b, 4 t0 : 4 (t0 + nt)] = A^T M A + bias for the tile products m[:, start : start + nt * tw]
    (m: (36, >= start + nt * tw, C_out), channels contiguous), plus ``residual`` and through a ReLU
    if asked.

    out: (B, H, W, C_out) channels-last, channels contiguous, m's dtype, C_out >= 16 (rows and columns
    beyond H and W are not written); bias: (C_out,) float32, contiguous; residual: None or (R, H, W,
    C_out) in out's dtype, channels contiguous, R = B (image b's residual) or 1 (the same for every
    image).  The sum is taken in float32 and rounded once to out's dtype (in float32 the same
    additions as adding the residual to the convolution's output afterwards).  ``parts``: as for
    :func:`input_transform`."""
    c = out.shape[3]
    if c < LANES or out.dtype not in _LIKE:
        raise ValueError(f"output_transform: needs float32 or bfloat16 with >= {LANES} channels, not "
                         f"{out.dtype}, {c}")
    _check_channels("output_transform: out", out, c, out.dtype)
    _check_channels("output_transform: m", m, c, out.dtype)
    _check_channels("output_transform: bias", bias, c, torch.float32)
    _check_chunk("output_transform", m, out.shape[0], out.shape[1], out.shape[2], b, t0, nt, start)
    zero = _zeros(out.dtype, c)
    if residual is None:
        res, srh, srw, has_res = zero.data_ptr(), 0, 0, False
    else:
        _check_channels("output_transform: residual", residual, c, out.dtype)
        if residual.shape[1:3] != out.shape[1:3] or residual.shape[0] not in (1, out.shape[0]):
            raise ValueError(f"output_transform: residual {tuple(residual.shape)} does not fit {tuple(out.shape)}")
        srb, srh, srw = _strides(residual, (0, 1, 2))
        res, has_res = residual.data_ptr() + (b if residual.shape[0] > 1 else 0) * srb, True
    sob, soh, sow = _strides(out, (0, 1, 2))
    parts = _parts(parts)
    sink = torch.empty(max(parts, 1), c, dtype=out.dtype)  # one per part: the dropped outputs
    args = ((_like(out.dtype), m.data_ptr()) + _strides(m, (0, 1))
            + (bias.data_ptr(), res, srh, srw, has_res, out.data_ptr() + b * sob, soh, sow, out.shape[1], out.shape[2],
               c, zero.data_ptr(), sink.data_ptr()))
    lo = 0.0 if relu else -math.inf
    if parts:
        _output_kernel_parallel(*args, c * out.element_size(), t0, nt, start, lo, parts)
    else:
        _output_kernel(*args, t0, nt, start, lo)


def warm_up() -> bool:
    """Compile (or load from numba's cache) both kernels for float32 and bfloat16, in the variant
    this process runs (parallel or one thread, :func:`fsvos.numba_threads.threads`; the other
    compiles on first use); True if they can run."""
    if not available():
        return False
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.zeros(1, 5, 6, LANES, dtype=dtype)
        v = torch.empty(36, 4, LANES, dtype=dtype)
        input_transform(x, v, 0, 0, 2)
        output_transform(v, torch.zeros(LANES), x, 0, 0, 2, residual=x.clone())
    return True
