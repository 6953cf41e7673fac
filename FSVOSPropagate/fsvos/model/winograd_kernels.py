"""The tile transforms of the Winograd F(4x4, 3x3) convolution in compiled loops (numba), CPU.

In torch each transform is several passes over the transformed tiles: a zero-padded copy of the
map, a gather of the overlapping 6x6 tiles, two small GEMMs (over the tile rows, then columns),
and a scatter with the bias.  Here each transform is one pass: the input kernel reads the
unpadded channels-last map (the padding is implicit) and writes the 36 transformed values of
every tile and channel; the output kernel reads the 36 tile products and writes the 4x4 outputs
plus the bias, cropped to the map.  Measured on the paper's decoder layers (2 cores), per chunk of
tiles: the transforms 2-8x faster than torch's, the whole convolution 10-25% faster.

Per tile, each transform is two passes over the channels (along the tile's columns into a small
scratch, then along its rows), each a loop over a few 1-D channel vectors that LLVM vectorises (a
loop over all 36 positions at once needs too many runtime alias checks and stays scalar).  The
passes are written out for each tile row and column, with the coefficients of ``B^T`` and ``A^T``
of :mod:`.winograd` as literals, by :func:`generate_source` into ``_winograd_tiles.py``; the
generated module is committed so that numba can cache its compiled code (code made by ``exec``
would be compiled again, about 20 s, in every process), and a test checks that it is current.
Written as loops over the tile rows instead, the kernels ran 1.4-3x slower.

bfloat16 maps are read and written as their 16-bit patterns (torch.uint16 views, see
:mod:`.numba_bf16`): transformed in float32 and rounded once to nearest even, as torch rounds, so
in bf16 the transforms add no rounding beyond storing V and the output (torch's bf16 transforms
round every intermediate product).

Each kernel has a ``_parallel`` variant that cuts the chunk's tiles into ranges run on numba's
threads (each tile written by one thread: bitwise the one-thread result, tested), used where
:func:`fsvos.numba_threads.threads` allows it (numba's OpenMP layer; see there why).  Session 12,
the paper's network with 3 objects at 512 px in bf16, 2 threads, alternating runs: the transforms
102-115 -> 65-67 ms per frame, the frame 460-494 -> 445-451 ms.  (Session 7 measured 2 threads
as 20% faster transforms but a longer frame; which numba threading layer ran then is not known.)
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from ..numba_threads import threads_for_loop
from .numba_bf16 import as_numpy, numba
from .winograd import _AT, _BT

if numba is not None:
    from . import _winograd_tiles

#: tile ranges per thread in the parallel kernels
_PARTS_PER_THREAD = 2

#: the generated module (see generate_source)
GENERATED_PATH = os.path.join(os.path.dirname(__file__), "_winograd_tiles.py")


def available() -> bool:
    """True if the compiled transforms can run (numba importable, ``FSVOS_FUSED_WINOGRAD`` not 0)."""
    return numba is not None and os.environ.get("FSVOS_FUSED_WINOGRAD", "1") != "0"


def _lin(coefs, names) -> str:
    """Source of sum_j coefs[j] * names[j], zero terms skipped, float32 literals."""
    out = ""
    for c, n in zip(coefs, names):
        c = float(c)
        if c == 0.0:
            continue
        term = n if abs(c) == 1.0 else f"np.float32({abs(c)!r}) * {n}"
        out += (" - " if c < 0 else " + ") + term if out else ("-" if c < 0 else "") + term
    return out


def _plus(name: str, k: int) -> str:
    return f"{name} + {k}" if k else name


def _bind(names, exprs) -> str:
    """``n0, n1, .. = e0, e1, ..``"""
    return ", ".join(names) + " = " + ", ".join(exprs)


def _channel_pass(comment: str, bindings: list, channels: str, loads: list, stores: list) -> list:
    """One pass of a transform over the channels of a tile: a comment, the 1-D channel vectors it
    reads and writes (``bindings``), and the loop over ``channels`` with ``loads`` then ``stores``;
    indented for the body of the tile loop."""
    ind = " " * 12
    body = [f"# {comment}", *bindings, f"for c in range({channels}):"] + [f"    {x}" for x in loads + stores]
    return [ind + x for x in body]


#: docstring lines of the ``parts`` argument
_PARTS_DOC = ["parts: ranges the tiles are cut into, each with its own scratch (run in parallel by the",
              '_parallel variant); the result does not depend on it."""']


def _kernel_head(name: str, args: str, doc: list, setup: list, scratch: list, row0: str, col0: str,
                 parallel: bool) -> list:
    """Decorator, signature, docstring, setup lines, then the loop over ``parts`` ranges of the
    chunk's tiles (``numba.prange`` when ``parallel``) with each range's ``scratch`` arrays, and the
    loop over the range's tiles."""
    deco = "@numba.njit(parallel=True, **_JIT)" if parallel else "@numba.njit(**_JIT)"
    loop = "numba.prange" if parallel else "range"
    return ([deco, f"def {name}{'_parallel' if parallel else ''}({args}, parts):"] + [f"    {x}" for x in doc + setup]
            + ["    tiles = nt * tw", f"    for p in {loop}(parts):"] + [f"        {x}" for x in scratch]
            + ["        for tt in range(p * tiles // parts, (p + 1) * tiles // parts):",
               "            i = tt // tw", "            j = tt - i * tw",
               f"            r = 4 * (t0 + i){row0}", f"            q = 4 * j{col0}", "            t = start + tt"])


def _input_kernel_source(parallel: bool) -> list:
    bt = _BT.tolist()
    lines = _kernel_head(
        "input_kernel", "x, v, b, t0, nt, start, floor",
        ['"""v[6 k1 + k2, start + i * tw + j] = (B^T d B)[k1, k2] of tile (t0 + i, j) of image b: x (B, H, W,',
         "C), the tile's 6x6 window starting at row 4 (t0 + i) - 1, column 4 j - 1, positions outside x",
         "reading as zeros (the padding); v (36, >= start + nt * tw, C).  Each value of x is read as",
         "max(x, floor): floor 0 applies a ReLU to the input on the fly, -inf reads it as it is.", *_PARTS_DOC],
        ["h, w, c_in = x.shape[1], x.shape[2], x.shape[3]", "tw = (w + 3) // 4", "zero = np.zeros(c_in, x.dtype)",
         "lo = np.float32(floor)"],
        ["e = np.empty((36, c_in), np.float32)  # e[6 a + k] = (d B)[a, k]"],
        " - 1", " - 1", parallel)
    d = [f"d{x}" for x in range(6)]
    for a in range(6):
        ra = _plus("r", a)
        slices = [f"x{x} = x[b, {ra}, {_plus('q', x)}] if row and {'q >= 0' if x == 0 else f'q + {x} < w'} else zero"
                  for x in range(6)]
        lines += _channel_pass(f"tile row {a}, along the columns",
                               [f"row = 0 <= {ra} < h"] + slices + [_bind([f"o{k}" for k in range(6)], [f"e[{6 * a + k}]" for k in range(6)])],
                               "c_in", [f"d{x} = max(widen(x{x}[c]), lo)" for x in range(6)],
                               [f"o{k}[c] = {_lin(bt[k], d)}" for k in range(6)])
    for k in range(6):
        lines += _channel_pass(f"tile column {k}, along the rows",
                               [_bind([f"g{a}" for a in range(6)], [f"e[{6 * a + k}]" for a in range(6)]),
                                _bind([f"w{k1}" for k1 in range(6)], [f"v[{6 * k1 + k}, t]" for k1 in range(6)])],
                               "c_in", [_bind(d, [f"g{a}[c]" for a in range(6)])],
                               [f"w{k1}[c] = narrow({_lin(bt[k1], d)}, w{k1})" for k1 in range(6)])
    return lines


def _output_kernel_source(parallel: bool) -> list:
    at = _AT.tolist()
    lines = _kernel_head(
        "output_kernel", "m, bias, res, has_res, rb, floor, out, b, t0, nt, start",
        ['"""out[b, 4 (t0 + i) + k1, 4 j + k2] = max((A^T M A)[k1, k2] + bias + res[rb, ...], floor) of chunk',
         "tile start + i * tw + j: m (36, >= start + nt * tw, C); bias (C,) float32; res (R, H, W, C) in",
         "out's dtype, added at the same position of its image rb if has_res (else not read); floor 0",
         "applies a ReLU, -inf none; summed in float32 and rounded once to out's dtype; out (B, H, W, C),",
         "the outputs beyond H or W (the last tiles' excess) dropped.", *_PARTS_DOC],
        ["h, w, c_out = out.shape[1], out.shape[2], out.shape[3]", "tw = (w + 3) // 4",
         "zero = np.zeros(c_out, out.dtype)  # the residual when there is none", "lo = np.float32(floor)"],
        ["f = np.empty((24, c_out), np.float32)  # f[4 a + k] = (M A)[a, k]",
         "sink = np.empty(c_out, out.dtype)  # the dropped outputs"],
        "", "", parallel)
    d = [f"d{x}" for x in range(6)]
    for a in range(6):
        lines += _channel_pass(f"product row {a}, along the columns",
                               [_bind([f"x{x}" for x in range(6)], [f"m[{6 * a + x}, t]" for x in range(6)]),
                                _bind([f"o{k}" for k in range(4)], [f"f[{4 * a + k}]" for k in range(4)])],
                               "c_out", [f"d{x} = widen(x{x}[c])" for x in range(6)],
                               [f"o{k}[c] = {_lin(at[k], d)}" for k in range(4)])
    for k in range(4):
        qk = _plus("q", k)
        outs = [f"w{k1} = out[b, {_plus('r', k1)}, {qk}] if col and {_plus('r', k1)} < h else sink" for k1 in range(4)]
        adds = [f"y{k1} = res[rb, {_plus('r', k1)}, {qk}] if has_res and col and {_plus('r', k1)} < h else zero"
                for k1 in range(4)]
        lines += _channel_pass(f"output column {k}, along the rows, plus the bias and the residual",
                               [_bind([f"g{a}" for a in range(6)], [f"f[{4 * a + k}]" for a in range(6)]),
                                f"col = {qk} < w"] + outs + adds,
                               "c_out", [_bind(d, [f"g{a}[c]" for a in range(6)]), "bc = bias[c]"],
                               [f"w{k1}[c] = narrow(max(({_lin(at[k1], d)}) + bc + widen(y{k1}[c]), lo), w{k1})"
                                for k1 in range(4)])
    return lines


def generate_source() -> str:
    """The text of ``_winograd_tiles.py``: both kernels written out from B^T and A^T."""
    head = [
        '"""Generated by fsvos.model.winograd_kernels.generate_source(): do not edit.',
        "",
        "The tile transforms of Winograd F(4x4, 3x3) (see winograd_kernels), written out per tile row",
        "and column with the coefficients of B^T and A^T of fsvos.model.winograd as literals.",
        '"""',
        "",
        "import numba",
        "import numpy as np",
        "",
        "from .numba_bf16 import narrow, widen",
        "",
        '_JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")',
        "",
        "",
    ]
    kernels = [_input_kernel_source(False), _input_kernel_source(True), _output_kernel_source(False),
               _output_kernel_source(True)]
    return "\n".join(head + sum((k + ["", ""] for k in kernels[:-1]), []) + kernels[-1]) + "\n"


def input_transform(x: torch.Tensor, v: torch.Tensor, b: int, t0: int, nt: int, start: int = 0,
                    relu: bool = False) -> None:
    """v[:, start : start + nt * tw] = B^T d B of the tiles of tile rows t0 .. t0 + nt of image b.

    x: (B, H, W, C) channels-last map, contiguous, not padded (the convolution's zero padding and the
    excess of the last tiles read as zeros); v: (36, >= start + nt * tw, C) contiguous, x's dtype
    (float32 or bfloat16), tw = ceil(W / 4); tile (i, j) is row ``start + i * tw + j`` of v (a chunk
    may hold the tiles of several images one after the other).  ``relu``: transform relu(x) instead
    (read on the fly; x is not changed)."""
    n = threads_for_loop()
    floor = 0.0 if relu else -math.inf
    if n > 1:
        _winograd_tiles.input_kernel_parallel(as_numpy(x), as_numpy(v), b, t0, nt, start, floor,
                                              n * _PARTS_PER_THREAD)
    else:
        _winograd_tiles.input_kernel(as_numpy(x), as_numpy(v), b, t0, nt, start, floor, 1)


def output_transform(m: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, b: int, t0: int, nt: int,
                     start: int = 0, residual: Optional[torch.Tensor] = None, relu: bool = False) -> None:
    """out[b, 4 t0 : 4 (t0 + nt)] = A^T M A + bias for the tile products m[:, start : start + nt * tw]
    (m: (36, >= start + nt * tw, C_out)), plus ``residual`` and through a ReLU if asked.

    out: (B, H, W, C_out) channels-last, contiguous, m's dtype (rows and columns beyond H and W are
    not written); bias: (C_out,) float32; residual: None or (R, H, W, C_out) contiguous in out's
    dtype, R = B (image b's residual) or 1 (the same for every image).  The sum is taken in float32
    and rounded once to out's dtype (in float32 the same additions as adding the residual to the
    convolution's output afterwards)."""
    n = threads_for_loop()
    # unchecked, like m and out: winograd_conv3x3 validates the residual once per convolution,
    # not once per chunk
    res, has_res, rb = (out, False, 0) if residual is None else (residual, True, b if residual.shape[0] > 1 else 0)
    floor = 0.0 if relu else -math.inf
    args = (as_numpy(m), bias.numpy(), as_numpy(res), has_res, rb, floor, as_numpy(out), b, t0, nt, start)
    if n > 1:
        _winograd_tiles.output_kernel_parallel(*args, n * _PARTS_PER_THREAD)
    else:
        _winograd_tiles.output_kernel(*args, 1)


def warm_up() -> bool:
    """Compile (or load from numba's cache) both kernels for float32 and bfloat16, in the variant
    this process runs (parallel or one thread, :func:`fsvos.numba_threads.threads`; the other
    compiles on first use); True if they can run."""
    if not available():
        return False
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.zeros(1, 5, 6, 2, dtype=dtype)
        v = torch.empty(36, 4, 2, dtype=dtype)
        input_transform(x, v, 0, 0, 2)
        output_transform(v, torch.zeros(2), x, 0, 0, 2, residual=x.clone())
    return True
