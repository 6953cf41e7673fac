"""Pointwise-heavy steps of the decoder in compiled loops (numba), for CPU inference.

``upsample_add``: an :class:`~fsvos.model.blocks.UpsampleBlock`'s ``skip + bilinear x2 upsampling``
of the coarser map.  In torch that is two passes over the larger map (the upsampled map written,
then read again for the sum) and torch's channels-last bilinear kernel is slow: for the paper's
decoder with 3 objects at 512 px (2 threads) the 1/8-resolution sum took 25 + 25 ms per frame in
float32 and the 1/4-resolution one 9 + 9 ms in bfloat16.  Here it is one pass that reads the
coarse map and the skip and writes the sum.

``conv3x3_to_one``: the decoder's last convolution (``pred``, C channels to 1 logit).  oneDNN
handles one output channel poorly: 8.6 ms per object at 128 x 128 x 256 in float32, 10 ms for 3
objects in bfloat16, for 0.08 GFLOP per object.  Here each output is 9 dot products over the
channels, vectorised.

``upsample4``: the decoder's final bilinear x4 upsampling of the float32 logits (torch's took
0.6-1.8 ms per frame for 3 objects at 512 px, this 0.07).

For the compact default's decoder (16 channels at 1/4 resolution) ``conv3x3_to_one`` reads its
input planar (one vectorised pass along each row per channel and tap).

All compute in float32 (bfloat16 maps read exactly and, for ``upsample_add``, the result
rounded once to nearest even) and differ from torch's operations by float rounding only: the
interpolation weights are torch's (``align_corners=False``), the sums are taken in another order
(tests compare them with torch).  Each has a ``_parallel`` variant that splits output rows over
numba's threads (each row written by one thread: the same result as on one thread), used where
:func:`fsvos.numba_threads.threads_for_loop` allows it.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from ..numba_threads import threads_for_loop
from .numba_bf16 import as_numpy, narrow, numba, widen

if numba is not None:
    _JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")

    @numba.njit(**_JIT)
    def _upsample_add_rows(up, skip, out, rows0, rows1):
        """Output rows rows0 .. rows1 (flattened b * H + y) of out = skip + bilinear x2 of up."""
        h, w, c = up.shape[1], up.shape[2], up.shape[3]
        ho, wo = out.shape[1], out.shape[2]
        one_skip = skip.shape[0] == 1
        for row in range(rows0, rows1):
            b = row // ho
            y = row - b * ho
            sb = 0 if one_skip else b
            # torch's source index for align_corners=False and scale 1/2, clamped at 0
            sy = max(np.float32(0.5) * (np.float32(y) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
            y0 = int(sy)
            y1 = y0 + 1 if y0 < h - 1 else y0
            ly1 = sy - np.float32(y0)
            ly0 = np.float32(1.0) - ly1
            for x in range(wo):
                sx = max(np.float32(0.5) * (np.float32(x) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
                x0 = int(sx)
                x1 = x0 + 1 if x0 < w - 1 else x0
                lx1 = sx - np.float32(x0)
                lx0 = np.float32(1.0) - lx1
                w00, w01, w10, w11 = ly0 * lx0, ly0 * lx1, ly1 * lx0, ly1 * lx1
                a00, a01, a10, a11 = up[b, y0, x0], up[b, y0, x1], up[b, y1, x0], up[b, y1, x1]
                s = skip[sb, y, x]
                o = out[b, y, x]
                for k in range(c):
                    v = (w00 * widen(a00[k]) + w01 * widen(a01[k])) + (w10 * widen(a10[k]) + w11 * widen(a11[k]))
                    o[k] = narrow(widen(s[k]) + v, o)

    @numba.njit(parallel=True, **_JIT)
    def _upsample_add_parallel(up, skip, out, parts):
        rows = out.shape[0] * out.shape[1]
        for p in numba.prange(parts):
            _upsample_add_rows(up, skip, out, p * rows // parts, (p + 1) * rows // parts)

    @numba.njit(**_JIT)
    def _x4_row(t, o):
        """o (4W,) = the row t (W,) float32 upsampled x4 (torch's align_corners=False weights: 1/8,
        3/8, 5/8, 7/8 between source samples, the borders clamped)."""
        w, wo = t.shape[0], o.shape[0]
        q1, q3, q5, q7 = np.float32(0.125), np.float32(0.375), np.float32(0.625), np.float32(0.875)
        o[0] = t[0]
        o[1] = t[0]
        for i in range(w - 1):  # output columns 4i+2 .. 4i+5 lie between source columns i, i+1
            a, c = t[i], t[i + 1]
            o[4 * i + 2] = q7 * a + q1 * c
            o[4 * i + 3] = q5 * a + q3 * c
            o[4 * i + 4] = q3 * a + q5 * c
            o[4 * i + 5] = q1 * a + q7 * c
        o[wo - 2] = t[w - 1]
        o[wo - 1] = t[w - 1]

    @numba.njit(**_JIT)
    def _upsample4_rows(planes, out, rows0, rows1):
        """Output rows rows0 .. rows1 (flattened p * 4H + y) of out = bilinear x4 of planes
        (P, H, W) float32 (torch's align_corners=False weights: 1/8, 3/8, 5/8, 7/8 between source
        samples, the borders clamped), out (P, 4H, 4W) float32."""
        h, w = planes.shape[1], planes.shape[2]
        ho = out.shape[1]
        tmp = np.empty(w, np.float32)
        for row in range(rows0, rows1):
            p = row // ho
            y = row - p * ho
            sy = max(np.float32(0.25) * (np.float32(y) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
            y0 = int(sy)
            y1 = y0 + 1 if y0 < h - 1 else y0
            ly1 = sy - np.float32(y0)
            ly0 = np.float32(1.0) - ly1
            r0, r1 = planes[p, y0], planes[p, y1]
            for i in range(w):  # the row interpolated at the source columns
                tmp[i] = ly0 * r0[i] + ly1 * r1[i]
            _x4_row(tmp, out[p, y])

    @numba.njit(parallel=True, **_JIT)
    def _upsample4_parallel(planes, out, parts):
        rows = out.shape[0] * out.shape[1]
        for p in numba.prange(parts):
            _upsample4_rows(planes, out, p * rows // parts, (p + 1) * rows // parts)

    # reassociation only: the channel sums vectorise (no approximate functions, NaN/inf kept)
    @numba.njit(fastmath={"reassoc"}, **_JIT)
    def _conv_to_one_rows(x, weight, bias, out, rows0, rows1):
        """Output rows rows0 .. rows1 (flattened b * H + y) of out = conv3x3(x, weight) + bias:
        x (B, H, W, C), weight (9, C) float32 (tap 3 dy + dx), out (B, H, W) float32."""
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        for row in range(rows0, rows1):
            b = row // h
            y = row - b * h
            for xo in range(w):
                acc = np.float32(0.0)
                for dy in range(3):
                    yy = y + dy - 1
                    if yy < 0 or yy >= h:
                        continue
                    for dx in range(3):
                        xx = xo + dx - 1
                        if xx < 0 or xx >= w:
                            continue
                        px = x[b, yy, xx]
                        wt = weight[3 * dy + dx]
                        for k in range(c):
                            acc += widen(px[k]) * wt[k]
                out[b, y, xo] = acc + bias

    @numba.njit(parallel=True, **_JIT)
    def _conv_to_one_parallel(x, weight, bias, out, parts):
        rows = out.shape[0] * out.shape[1]
        for p in numba.prange(parts):
            _conv_to_one_rows(x, weight, bias, out, p * rows // parts, (p + 1) * rows // parts)

    @numba.njit(fastmath={"reassoc"}, **_JIT)
    def _conv_to_one_planar_rows(x, weight, bias, out, rows0, rows1):
        """As :func:`_conv_to_one_rows` for a planar x (B, C, H, W): each tap of each channel is one
        vectorised pass along the row (for few channels, where a dot product over the channels
        per pixel is too short to vectorise well)."""
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        acc = np.empty(w, np.float32)
        for row in range(rows0, rows1):
            b = row // h
            y = row - b * h
            for xo in range(w):
                acc[xo] = np.float32(0.0)
            for dy in range(3):
                yy = y + dy - 1
                if yy < 0 or yy >= h:
                    continue
                for k in range(c):
                    src = x[b, k, yy]
                    w0, w1, w2 = weight[3 * dy, k], weight[3 * dy + 1, k], weight[3 * dy + 2, k]
                    if w == 1:
                        acc[0] += w1 * widen(src[0])
                        continue
                    acc[0] += w1 * widen(src[0]) + w2 * widen(src[1])
                    for xo in range(1, w - 1):
                        acc[xo] += w0 * widen(src[xo - 1]) + w1 * widen(src[xo]) + w2 * widen(src[xo + 1])
                    acc[w - 1] += w0 * widen(src[w - 2]) + w1 * widen(src[w - 1])
            o = out[b, y]
            for xo in range(w):
                o[xo] = acc[xo] + bias

    @numba.njit(parallel=True, **_JIT)
    def _conv_to_one_planar_parallel(x, weight, bias, out, parts):
        rows = out.shape[0] * out.shape[1]
        for p in numba.prange(parts):
            _conv_to_one_planar_rows(x, weight, bias, out, p * rows // parts, (p + 1) * rows // parts)

    @numba.njit(**_JIT)
    def _x4_columns_rows(planes, out, rows0, rows1):
        """Rows rows0 .. rows1 (flattened p * H + y) of out (P, H, 4W) = planes (P, H, W) float32
        upsampled x4 along the rows only (the column weights of :func:`_upsample4_rows`)."""
        h = planes.shape[1]
        for row in range(rows0, rows1):
            p = row // h
            y = row - p * h
            _x4_row(planes[p, y], out[p, y])

    @numba.njit(parallel=True, **_JIT)
    def _x4_columns_parallel(planes, out, parts):
        rows = planes.shape[0] * planes.shape[1]
        for p in numba.prange(parts):
            _x4_columns_rows(planes, out, p * rows // parts, (p + 1) * rows // parts)

    @numba.njit(**_JIT)
    def _refine_g_row(proj_x, image_feat, logits, gain, k, yy, g):
        """Row yy of the refiner's hidden map of object k into g (C, W) float32:
        relu(bilinear x4 of proj + image_feat + gain * logits[k]), from proj_x (K, C, h, W), the
        projection already upsampled along its rows, and image_feat (1, C, H, W) planar."""
        c_n, h = proj_x.shape[1], proj_x.shape[2]
        wo = g.shape[1]
        sy = max(np.float32(0.25) * (np.float32(yy) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
        y0 = int(sy)
        y1 = y0 + 1 if y0 < h - 1 else y0
        ly1 = sy - np.float32(y0)
        ly0 = np.float32(1.0) - ly1
        lg = logits[k, yy]
        for c in range(c_n):
            r0, r1, img, o = proj_x[k, c, y0], proj_x[k, c, y1], image_feat[0, c, yy], g[c]
            gc = gain[c]
            for x in range(wo):
                v = ly0 * r0[x] + ly1 * r1[x] + widen(img[x]) + gc * lg[x]
                o[x] = v if v > np.float32(0.0) else np.float32(0.0)

    @numba.njit(fastmath={"reassoc"}, **_JIT)
    def _refine_rows(proj_x, image_feat, logits, gain, taps, bias, out, rows0, rows1):
        """Output rows rows0 .. rows1 (flattened k * H + y) of the refined logits out (K, H, W):
        logits + conv3x3(hidden map, taps) + bias, the hidden map's rows made once each in a ring
        of 3, plus a row of zeros for the convolution's padding above and below the map."""
        c_n = proj_x.shape[1]
        ho, wo = out.shape[1], out.shape[2]
        ring = np.zeros((4, c_n, wo), np.float32)  # slot 3: zeros
        acc = np.empty(wo, np.float32)
        for row in range(rows0, rows1):
            k = row // ho
            y = row - k * ho
            if row == rows0 or y == 0:  # a new run of rows: the rows above and at y
                if y > 0:
                    _refine_g_row(proj_x, image_feat, logits, gain, k, y - 1, ring[(y - 1) % 3])
                _refine_g_row(proj_x, image_feat, logits, gain, k, y, ring[y % 3])
            if y + 1 < ho:
                _refine_g_row(proj_x, image_feat, logits, gain, k, y + 1, ring[(y + 1) % 3])
            s0 = (y - 1) % 3 if y > 0 else 3
            s2 = (y + 1) % 3 if y + 1 < ho else 3
            for x in range(wo):
                acc[x] = bias
            for c in range(c_n):  # the 9 taps of a channel in one pass along the row
                a, b, d = ring[s0, c], ring[y % 3, c], ring[s2, c]
                a0, a1, a2 = taps[0, c], taps[1, c], taps[2, c]
                b0, b1, b2 = taps[3, c], taps[4, c], taps[5, c]
                d0, d1, d2 = taps[6, c], taps[7, c], taps[8, c]  # rows are 4W >= 4 wide
                acc[0] += (a1 * a[0] + a2 * a[1]) + (b1 * b[0] + b2 * b[1]) + (d1 * d[0] + d2 * d[1])
                for x in range(1, wo - 1):
                    acc[x] += ((a0 * a[x - 1] + a1 * a[x] + a2 * a[x + 1]) + (b0 * b[x - 1] + b1 * b[x] + b2 * b[x + 1])
                               + (d0 * d[x - 1] + d1 * d[x] + d2 * d[x + 1]))
                acc[wo - 1] += ((a0 * a[wo - 2] + a1 * a[wo - 1]) + (b0 * b[wo - 2] + b1 * b[wo - 1])
                                + (d0 * d[wo - 2] + d1 * d[wo - 1]))
            lg, o = logits[k, y], out[k, y]
            for x in range(wo):
                o[x] = lg[x] + acc[x]

    @numba.njit(parallel=True, **_JIT)
    def _refine_parallel(proj, image_feat, logits, gain, taps, bias, out, parts):
        rows = out.shape[0] * out.shape[1]
        for p in numba.prange(parts):
            _refine_rows(proj, image_feat, logits, gain, taps, bias, out, p * rows // parts, (p + 1) * rows // parts)

#: row ranges per thread in the parallel kernels
_PARTS_PER_THREAD = 4


def run_rows(rows_kernel, parallel_kernel, args: tuple, rows: int) -> None:
    """Run a kernel over output rows 0 .. rows: ``parallel_kernel(*args, parts)`` on numba's threads
    (:func:`fsvos.numba_threads.threads_for_loop`; the rows in ``parts`` ranges), else
    ``rows_kernel(*args, 0, rows)`` on this thread."""
    n = threads_for_loop()
    if n > 1:
        parallel_kernel(*args, n * _PARTS_PER_THREAD)
    else:
        rows_kernel(*args, 0, rows)

#: conv3x3_to_one reads inputs of at most this many channels planar (one vectorised pass along the
#: row per channel and tap) instead of pixel-major (a dot product over the channels per pixel and
#: tap).  3 maps of 128 x 128, 2 threads: 16 channels 1.0 -> 0.5 ms (bf16 and fp32); at 32 the two
#: were even in bf16 and planar slower in fp32 (its layout change costs more than it saves)
PLANAR_MAX_CHANNELS = 24


def available() -> bool:
    """True if the compiled decoder steps can run (numba importable, ``FSVOS_FUSED_DECODER`` not 0)."""
    return numba is not None and os.environ.get("FSVOS_FUSED_DECODER", "1") != "0"


def applies(*maps: torch.Tensor) -> bool:
    """True where the compiled steps replace torch's: CPU float32/bfloat16 maps outside autograd,
    with the kernels available."""
    return (available() and not torch.is_grad_enabled()
            and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16) for t in maps))


def upsample_add(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """skip + F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False) in one pass.

    up: (B, C, h, w); skip: (B or 1, C, 2h, 2w) (one map added to every image when 1), the same
    dtype, float32 or bfloat16, any memory format (channels-last avoids copies).  Returns (B, C,
    2h, 2w) channels-last in that dtype; bfloat16 sums are computed in float32 and rounded once.
    """
    b, c, h, w = up.shape
    if skip.dtype != up.dtype or skip.dim() != 4 or skip.shape[0] not in (1, b) \
            or tuple(skip.shape[1:]) != (c, 2 * h, 2 * w):
        raise ValueError(f"upsample_add: skip {tuple(skip.shape)} {skip.dtype} does not fit the upsampled "
                         f"({b}, {c}, {2 * h}, {2 * w}) {up.dtype}")
    up_nhwc = up.permute(0, 2, 3, 1).contiguous()
    skip_nhwc = skip.permute(0, 2, 3, 1).contiguous()
    out = torch.empty(b, 2 * h, 2 * w, c, dtype=up.dtype)
    args = (as_numpy(up_nhwc), as_numpy(skip_nhwc), as_numpy(out))
    run_rows(_upsample_add_rows, _upsample_add_parallel, args, b * 2 * h)
    return out.permute(0, 3, 1, 2)


def upsample4(x: torch.Tensor) -> torch.Tensor:
    """F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False) of float32 maps.

    x: (B, C, H, W) float32 (plain layout avoids a copy; the decoder's logits have C = 1).  Returns
    (B, C, 4H, 4W) float32, plain layout, within float32 rounding of torch's (the same weights,
    summed in another order).  Each output row is interpolated from one source row pair, the x4
    columns as four fixed blends of neighbouring source values (torch's own kernel took 0.6-1.8 ms
    for 3 logit maps of 512 x 512 here, this 0.07)."""
    if x.dtype != torch.float32 or x.dim() != 4:
        raise ValueError(f"upsample4: needs a (B, C, H, W) float32 map, got {tuple(x.shape)} {x.dtype}")
    b, c, h, w = x.shape
    planes = x.contiguous().view(b * c, h, w)
    out = torch.empty(b, c, 4 * h, 4 * w, dtype=torch.float32)
    args = (planes.numpy(), out.view(b * c, 4 * h, 4 * w).numpy())
    run_rows(_upsample4_rows, _upsample4_parallel, args, b * c * 4 * h)
    return out


def conv3x3_to_one(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) for one output channel, in float32.

    x: (B, C, H, W) float32 or bfloat16, any memory format (channels-last avoids a copy); weight
    (1, C, 3, 3), bias (1,) or None.  Returns (B, 1, H, W) float32 (a bfloat16 network's logits
    are not rounded to bfloat16)."""
    b, c, h, w = x.shape
    if tuple(weight.shape) != (1, c, 3, 3):
        raise ValueError(f"conv3x3_to_one: weight {tuple(weight.shape)} does not fit an input of {c} channels")
    planar = c <= PLANAR_MAX_CHANNELS
    # pixel-major (channels-last) for dot products over the channels; planar for few channels
    x_in = x.contiguous() if planar else x.permute(0, 2, 3, 1).contiguous()
    taps = weight.detach()[0].float().permute(1, 2, 0).reshape(9, c).contiguous()  # (9, C), tap 3 dy + dx
    b0 = np.float32(0.0 if bias is None else float(bias.detach()[0]))
    out = torch.empty(b, h, w, dtype=torch.float32)
    args = (as_numpy(x_in), taps.numpy(), b0, out.numpy())
    if planar:
        run_rows(_conv_to_one_planar_rows, _conv_to_one_planar_parallel, args, b * h)
    else:
        run_rows(_conv_to_one_rows, _conv_to_one_parallel, args, b * h)
    return out.unsqueeze(1)


def refine_tail(proj: torch.Tensor, image_feat: torch.Tensor, logits: torch.Tensor, gain: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The refiner's full-resolution work (:class:`~fsvos.model.refine.Refiner`) in one pass:
    ``logits + conv3x3(relu(up4(proj) + image_feat + gain * logits), weight) + bias``.

    proj: (K, C, h, w) float32 or bfloat16 (the decoder's features projected to C channels, 1/4);
    image_feat: (1, C, 4h, 4w) float32 or bfloat16, any memory format (channels-last avoids a
    copy); logits: (K, 1, 4h, 4w) float32; gain: (C, 1, 1, 1); weight (1, C, 3, 3); bias (1,).
    Returns (K, 1, 4h, 4w) float32.  No full-resolution hidden map is written: its rows are made
    in a ring of 3 and convolved at once (torch's steps took 12 ms for 3 objects at 512 px).  The
    projection is first upsampled along its rows at 1/4 of the rows, so that each hidden row is one
    vectorised blend of two of them.
    """
    k, c, h, w = proj.shape
    if tuple(image_feat.shape) != (1, c, 4 * h, 4 * w) or tuple(logits.shape) != (k, 1, 4 * h, 4 * w):
        raise ValueError(f"refine_tail: maps do not fit: proj {tuple(proj.shape)}, image_feat "
                         f"{tuple(image_feat.shape)}, logits {tuple(logits.shape)}")
    if tuple(weight.shape) != (1, c, 3, 3) or gain.numel() != c or logits.dtype != torch.float32:
        raise ValueError("refine_tail: weights do not fit the maps, or logits are not float32")
    planes = proj.float().contiguous().view(k * c, h, w)
    proj_x = torch.empty(k, c, h, 4 * w, dtype=torch.float32)  # upsampled along the rows: 1/4 of the map
    run_rows(_x4_columns_rows, _x4_columns_parallel, (planes.numpy(), proj_x.view(k * c, h, 4 * w).numpy()), k * c * h)
    img = image_feat.contiguous()  # planar: each row of a channel read in one vectorised pass
    taps = weight.detach()[0].float().permute(1, 2, 0).reshape(9, c).contiguous()  # (9, C), tap 3 dy + dx
    g = gain.detach().float().reshape(c).contiguous()
    out = torch.empty(k, 4 * h, 4 * w, dtype=torch.float32)
    args = (proj_x.numpy(), as_numpy(img), logits.contiguous().view(k, 4 * h, 4 * w).numpy(), g.numpy(),
            taps.numpy(), np.float32(float(bias.detach()[0])), out.numpy())
    run_rows(_refine_rows, _refine_parallel, args, k * 4 * h)
    return out.unsqueeze(1)


def warm_up() -> bool:
    """Compile (or load from numba's cache) both kernels for float32 and bfloat16 in the variant
    this process runs; True if they can run."""
    if not available():
        return False
    for dtype in (torch.float32, torch.bfloat16):
        up = torch.zeros(1, 2, 2, 3, dtype=dtype)
        upsample_add(torch.zeros(1, 2, 4, 6, dtype=dtype), up)
        conv3x3_to_one(up, torch.zeros(1, 2, 3, 3), torch.zeros(1))  # planar
        wide = torch.zeros(1, PLANAR_MAX_CHANNELS + 1, 2, 3, dtype=dtype)
        conv3x3_to_one(wide, torch.zeros(1, PLANAR_MAX_CHANNELS + 1, 3, 3), torch.zeros(1))
        refine_tail(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 8, 12, dtype=dtype), torch.zeros(1, 1, 8, 12),
                    torch.zeros(2, 1, 1, 1), torch.zeros(1, 2, 3, 3), torch.zeros(1))
    upsample4(torch.zeros(1, 1, 2, 3))
    return True
