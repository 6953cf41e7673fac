"""Matching a query frame against the memory, and reading out the memory values.

Notation (stride 16): the memory holds T frames of N = h*w positions each, the
query has M = h*w positions; C_k key channels, C_v value channels per object.

Similarity (STCN): s(k, q) = (2 k.q - |k|^2) / sqrt(C_k), i.e. minus the squared
L2 distance without the |q|^2 term, which the softmax over memory cancels.  It
is computed ONCE per query frame and shared by all objects.

Modes
-----
``global``  every memory position is a candidate for every query (STCN).
``local``   per memory frame only a k x k window of positions is a candidate
            (the paper, Sec. 3.2); the window is centred on
            * ``reference="fixed"``: the query's own position (the released code);
            * ``reference="similarity"``: the position of the most similar memory
              key in that frame (Eq. 8-9).
            Window slots that fall outside the map are candidates with logit
            ``outside_logit`` and a zero value: the released code pads keys and
            values with zeros and adds -1 to those slots (its training did the
            same), so the default -1.0 reproduces it; ``float("-inf")`` drops them.

The candidates of all memory frames (T * k^2, or T * N for global) go through
ONE softmax (max subtracted), optionally restricted to the ``top_k`` largest.

Nothing 512-channel is ever unfolded: the window logits are gathered by index
from the (M x N) similarity of each memory frame (a GEMM on 64-d keys), and the
readout either gathers the top-k values per query (``embedding_bag``, a sparse
weighted sum) or scatters the weights into a dense (T*N x M) affinity and does
one GEMM with the values.  On the CPU, local matching with a top-k selects its
candidates with the compiled loops of :mod:`.window_select` (the same candidates,
without gathering all T*k^2 window logits).  With ``select_bf16`` the candidates are
chosen on a low-precision similarity (a bf16 GEMM, or integer GEMMs of int8 keys,
:class:`Int8Keys`) and their logits re-computed exactly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..model.numba_bf16 import as_numpy
from . import int8_select, window_select

#: above this many candidates per query the readout uses a dense affinity + GEMM
_SPARSE_READOUT_MAX = 64


@dataclass
class Affinity:
    """Sparse affinity, query-major: readout[m] = sum_s weight[m, s] * values[index[m, s]].

    index: long (M, S) into the memory's T*N positions; weight: float32 (M, S),
    each row sums to 1 over the candidates kept (slots outside the map hold
    weight but no value).  Query-major so that argmax, top-k and softmax run
    along contiguous rows.
    """

    index: torch.Tensor
    weight: torch.Tensor


class WindowGrid:
    """Offsets of a k x k window on an h x w map, in the order of ``Tensor.unfold`` (row-major).

    ``window_index`` / ``window_outside`` hold, for every possible window centre c (N of them), the
    flat positions of its k^2 slots (clamped into the map) and which slots fall outside the map.
    """

    def __init__(self, h: int, w: int, window: int, device: torch.device):
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 1, got {window}")
        r = window // 2
        off = torch.arange(-r, r + 1, device=device)
        self.dy = off.repeat_interleave(window)  # (k^2,)
        self.dx = off.repeat(window)  # (k^2,)
        self.h, self.w, self.window = h, w, window
        pos = torch.arange(h * w, device=device)
        self.qy, self.qx = pos // w, pos % w  # query positions (M,)
        index, valid = self.gather_index(self.qy, self.qx)
        self.window_index = index  # (N, k^2) long
        self.window_outside = ~valid  # (N, k^2) bool
        # the same with outside slots pointing at an extra column N (which holds the outside logit)
        self.window_index_ext = torch.where(valid, index, torch.full_like(index, h * w))

    def gather_index(self, cy: torch.Tensor, cx: torch.Tensor):
        """Window positions around centres (..., M) -> flat index (..., M, k^2) (clamped) and validity."""
        y = cy[..., None] + self.dy
        x = cx[..., None] + self.dx
        valid = (y >= 0) & (y < self.h) & (x >= 0) & (x < self.w)
        index = y.clamp(0, self.h - 1) * self.w + x.clamp(0, self.w - 1)
        return index, valid


def frame_similarity(query_key_t: torch.Tensor, mem_key: torch.Tensor, mem_key_sq: torch.Tensor,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(2 k.q - |k|^2)/sqrt(C_k) against ONE memory frame: query_key_t (M, C_k), mem_key (C_k, N),
    mem_key_sq (N,) -> (M, N), written into ``out`` (an (M, N) view) when given.  One frame at a
    time keeps the (M x N) block in cache."""
    scale = 1.0 / math.sqrt(query_key_t.shape[1])
    return torch.addmm(mem_key_sq[None], query_key_t, mem_key, beta=-scale, alpha=2.0 * scale, out=out)


def selection_keys(mem_key: torch.Tensor, mem_key_sq: torch.Tensor) -> torch.Tensor:
    """Memory keys for a bf16 similarity GEMM: (T, C_k, N), (T, N) -> (T, C_k + 1, N) bfloat16
    holding [2k, -|k|^2] / sqrt(C_k), so that [q, 1] . column = s(k, q) in one product.

    The result is a transposed view of position-major storage (T, N, C_k + 1), written in
    place from the memory bank's position-major keys (12x faster than concatenating them).
    The memory bank keeps them per frame (:func:`write_selection_keys`), the same bits."""
    t, ck, n = mem_key.shape
    out = torch.empty(t, n, ck + 1, dtype=torch.bfloat16, device=mem_key.device)
    write_selection_keys(mem_key.transpose(1, 2), mem_key_sq, out)
    return out.transpose(1, 2)


def write_selection_keys(key_rows: torch.Tensor, key_sq: torch.Tensor, out: torch.Tensor) -> None:
    """out[..., :C_k] = 2 k / sqrt(C_k), out[..., C_k] = -|k|^2 / sqrt(C_k) in bfloat16:
    key_rows (..., N, C_k) position-major, key_sq (..., N), out (..., N, C_k + 1)."""
    ck = key_rows.shape[-1]
    scale = 1.0 / math.sqrt(ck)
    torch.mul(key_rows, 2.0 * scale, out=out[..., :ck])
    torch.mul(key_sq, -scale, out=out[..., ck])


@dataclass
class Int8Keys:
    """Memory keys quantised to int8 with one scale for the whole memory (k ~ scale * q8), for
    selecting candidates with integer products (:func:`local_affinity`).

    q8: (T, N, C_k) int8, position-major; scale: float, > 0; packed, key_sum: the same keys in the
    layout of the fused selection (:func:`.int8_select.pack_keys`, (T, N_pad * 64) int8) and
    their element sums ((T, N) int32), when the memory bank keeps them (else made when needed).
    """

    q8: torch.Tensor
    scale: float
    packed: Optional[torch.Tensor] = None
    key_sum: Optional[torch.Tensor] = None


def int8_available() -> bool:
    """True if candidates can be selected on int8 keys here: torch's integer GEMM exists and
    ``FSVOS_INT8_SELECT=0`` is not set (the compiled selection is needed too:
    :func:`fsvos.inference.window_select.available`)."""
    return hasattr(torch, "_int_mm") and os.environ.get("FSVOS_INT8_SELECT", "1") != "0"


def quantise_int8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """round(x / scale) clamped to [-127, 127], as int8 (same shape)."""
    return torch.mul(x, 1.0 / scale).round_().clamp_(-127, 127).to(torch.int8)


def _int8_operands(query_key_t: torch.Tensor, mem_key_sq: torch.Tensor, keys: Int8Keys):
    """(query rows (M, C_k) int8, column offsets (T, N) int32, logit of one unit) such that for
    memory frame t: s(k, q) ~ unit * (q8 . k8 - offset[t]), i.e. 2 a b q8.k8 - |k|^2 over sqrt(C_k)
    with query scale a and key scale b; None if the offsets would not fit in int32."""
    ck = query_key_t.shape[1]
    lo, hi = torch.aminmax(query_key_t)
    a = max(-float(lo), float(hi)) / 127.0
    if not (a > 0.0 and math.isfinite(a)):
        a = 1.0  # an all-zero query: every similarity is -|k|^2, the offsets carry it all
    b = keys.scale
    offset = mem_key_sq.double().mul_(1.0 / (2.0 * a * b))  # |k|^2 >= 0
    if not float(offset.max()) < 2 ** 30:  # (False for NaN too)
        return None
    return quantise_int8(query_key_t, a), offset.round_().to(torch.int32), 2.0 * a * b / math.sqrt(ck)


def exact_logits(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key_t: torch.Tensor,
                 index: torch.Tensor, valid: Optional[torch.Tensor], outside_logit: float) -> torch.Tensor:
    """s(k, q) in float32 for chosen candidates only: query_key_t (M, C_k), index (M, S) into the
    T*N memory positions, valid (M, S) or None -> (M, S); invalid (outside) slots get ``outside_logit``."""
    t, ck, n = mem_key.shape
    scale = 1.0 / math.sqrt(ck)
    key_rows = mem_key.transpose(1, 2).reshape(t * n, ck)[index]  # (M, S, C_k)
    dot = torch.bmm(key_rows, query_key_t[:, :, None])[..., 0]  # (M, S)
    logits = (2.0 * dot - mem_key_sq.reshape(-1)[index]) * scale
    if valid is not None:
        logits = torch.where(valid, logits, torch.full_like(logits, outside_logit))
    return logits


def argmax_rows(s: torch.Tensor, block: int = 32) -> torch.Tensor:
    """s.argmax(dim=1) of an (M, N) matrix with unit column stride (the first maximum on ties, as
    torch.argmax).

    torch's argmax does not vectorise on the CPU; this finds each row's first block holding the
    maximum with a vectorised amax over blocks of ``block`` columns, then the argmax inside it.
    """
    m, n = s.shape
    if n % block or n < 2 * block or s.stride(1) != 1:
        return s.argmax(dim=1)
    by_block = s.as_strided((m, n // block, block), (s.stride(0), block, 1))
    b = by_block.amax(dim=2).argmax(dim=1)  # (M,) first block holding the row's maximum
    inside = by_block.gather(1, b.view(m, 1, 1).expand(m, 1, block))[:, 0]  # (M, block)
    return b * block + inside.argmax(dim=1)


def _softmax_topk(logits: torch.Tensor, index: torch.Tensor, valid: Optional[torch.Tensor],
                  top_k: Optional[int]) -> Affinity:
    """One softmax over the candidates (dim 1) of (M, S) logits, optionally over the top_k largest only."""
    if top_k is not None and top_k < logits.shape[1]:
        logits, sel = torch.topk(logits, k=top_k, dim=1)
        index = index.gather(1, sel)
        valid = None if valid is None else valid.gather(1, sel)
    weight = torch.softmax(logits, dim=1)  # subtracts the max
    if valid is not None:
        weight = weight * valid
    return Affinity(index=index, weight=weight)


def rescores_few(top_k: Optional[int]) -> bool:
    """Whether a top_k keeps few enough candidates that, with ``select_bf16``, they are chosen on a
    low-precision similarity and re-scored exactly (at most the sparse readout's 64)."""
    return top_k is not None and top_k <= _SPARSE_READOUT_MAX


def _bf16_selection(top_k: Optional[int], candidates: int, select_bf16: bool) -> bool:
    """Whether candidates are chosen on a bf16 similarity and re-scored exactly (only a few kept)."""
    return select_bf16 and rescores_few(top_k) and top_k < candidates


def _similarity_writer(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, qt: torch.Tensor, bf16: bool,
                       out_dtype: torch.dtype = torch.float32, sel_keys: Optional[torch.Tensor] = None):
    """A function (ti, out) writing s(k, q) of memory frame ti into the (M, N) view ``out``: a
    float32 GEMM, or, when ``bf16``, a bfloat16 GEMM (keys and values exact in bf16 when the
    network runs in bf16; the products accumulate in float32 and are rounded once to bf16).
    ``out`` is float32, or with ``out_dtype=torch.bfloat16`` (only when ``bf16``) the bf16 product
    as it is, without a float32 copy.  sel_keys: the memory's :func:`selection_keys` when already
    at hand (the memory bank keeps them), else made here."""
    if not bf16:
        return lambda ti, out: frame_similarity(qt, mem_key[ti], mem_key_sq[ti], out=out)
    sel_keys, q_ext = _bf16_operands(mem_key, mem_key_sq, qt, sel_keys)
    if out_dtype == torch.bfloat16:
        return lambda ti, out: torch.mm(q_ext, sel_keys[ti], out=out)
    return lambda ti, out: out.copy_(torch.mm(q_ext, sel_keys[ti]))


def _bf16_operands(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, qt: torch.Tensor,
                   sel_keys: Optional[torch.Tensor] = None):
    """(selection keys (T, C_k+1, N), query rows [q, 1] (M, C_k+1)) in bfloat16: their product
    is s(k, q) of one memory frame.  sel_keys: the selection keys if already made."""
    q_ext = torch.cat([qt, qt.new_ones(qt.shape[0], 1)], dim=1).to(torch.bfloat16)
    if sel_keys is None:
        sel_keys = selection_keys(mem_key, mem_key_sq)
    elif sel_keys.shape != (mem_key.shape[0], mem_key.shape[1] + 1, mem_key.shape[2]):
        raise ValueError(f"selection keys {tuple(sel_keys.shape)} do not match memory keys {tuple(mem_key.shape)}")
    return sel_keys, q_ext


def global_affinity(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key: torch.Tensor,
                    top_k: Optional[int], select_bf16: bool = False,
                    sel_keys: Optional[torch.Tensor] = None) -> Affinity:
    """STCN global matching over all T*N memory positions.

    select_bf16: choose the top_k candidates on a bfloat16 similarity (2-3x faster GEMM) and
    compute their logits exactly in float32 (only with a top_k <= 64; else ignored).
    sel_keys: the memory's :func:`selection_keys` (T, C_k + 1, N) when at hand (else made here
    when needed).
    """
    t, _, n = mem_key.shape
    m = query_key.shape[1]
    bf16 = _bf16_selection(top_k, t * n, select_bf16)
    logits = torch.empty(m, t, n, dtype=torch.float32, device=query_key.device)
    qt = query_key.t().contiguous()  # (M, C_k)
    similarity = _similarity_writer(mem_key, mem_key_sq, qt, bf16, sel_keys=sel_keys)
    for ti in range(t):
        similarity(ti, logits[:, ti])
    index = torch.arange(t * n, device=logits.device)[None, :].expand(m, -1)
    if not bf16:
        return _softmax_topk(logits.reshape(m, t * n), index, None, top_k)
    sel = torch.topk(logits.reshape(m, t * n), k=top_k, dim=1).indices  # (M, top_k)
    exact = exact_logits(mem_key, mem_key_sq, qt, sel, None, 0.0)
    return Affinity(index=sel, weight=torch.softmax(exact, dim=1))


def local_affinity(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key: torch.Tensor,
                   grid: WindowGrid, reference: str, top_k: Optional[int],
                   outside_logit: float = -1.0, select_bf16: bool = False,
                   compiled: Optional[bool] = None, sel_keys: Optional[torch.Tensor] = None,
                   select_threads: Optional[int] = None, int8_keys: Optional[Int8Keys] = None) -> Affinity:
    """Local matching: a k x k window per memory frame, centred per ``reference``.

    Returns the query-major affinity over the T * k^2 candidates of each query, ordered
    memory frame by memory frame, window slots row-major (the top_k largest when top_k < T*k^2).

    select_bf16: find the window centres (Eq. 8) and the top_k candidates on a bfloat16
    similarity (a 2-3x faster GEMM), then compute the kept candidates' logits exactly in float32
    for the softmax (only with a top_k <= 64; else ignored).  Near-ties may then choose another
    centre or candidate than the float32 path; the bf16 precision mode uses it.

    compiled: with a top_k on the CPU, select the candidates with the compiled loops of
    :mod:`~fsvos.inference.window_select` instead of gathering all T*k^2 logits for
    ``torch.topk`` (same candidates and weights, 2-3x faster); None = when numba is available.

    sel_keys: the memory's :func:`selection_keys` (T, C_k + 1, N) when at hand (the memory bank
    keeps them: made once per memory frame instead of once per query frame), else made here
    when needed.

    select_threads: threads of the compiled selection; None = :func:`fsvos.numba_threads.threads`
    (torch's thread count where numba's OpenMP layer runs; the result does not depend on it).

    int8_keys: the memory keys in int8 (the memory bank keeps them): with ``select_bf16`` and the
    compiled selection, the window centres and the top_k candidates are then found on integer
    GEMMs of int8 keys and queries (twice the bf16 GEMM's speed on CPUs with AVX-512 VNNI) instead
    of the bf16 similarity, and re-scored exactly in float32 as there.  Quantisation to int8 rounds
    about as coarsely as the bf16 similarity: near-ties may choose other candidates than float32.
    """
    if reference not in ("fixed", "similarity"):
        raise ValueError(f"unknown reference {reference!r}")
    t, _, n = mem_key.shape
    m = query_key.shape[1]
    kk = grid.window * grid.window
    dev = query_key.device
    bf16 = _bf16_selection(top_k, t * kk, select_bf16)
    qt = query_key.t().contiguous()  # (M, C_k)
    if compiled is None:
        compiled = window_select.available()
    if compiled and dev.type == "cpu" and top_k is not None and top_k < t * kk:
        int8_ops = None
        if bf16 and int8_keys is not None:
            if int8_keys.q8.shape != (t, n, mem_key.shape[1]):
                raise ValueError(f"int8 keys {tuple(int8_keys.q8.shape)} do not match memory keys {tuple(mem_key.shape)}")
            int8_ops = _int8_operands(qt, mem_key_sq, int8_keys)
        selector = window_select.WindowSelector(m, top_k, grid.h, grid.w, grid.window, outside_logit,
                                                similarity_centre=reference == "similarity",
                                                threads=select_threads,
                                                int_unit=None if int8_ops is None else int8_ops[2])
        if int8_ops is not None and int8_select.usable(grid.window, top_k, qt.shape[1]):
            q8, offset, _ = int8_ops  # the products computed inside the selection loop
            packed = int8_keys.packed if int8_keys.packed is not None else int8_select.pack_keys(int8_keys.q8)
            key_sum = (int8_keys.key_sum if int8_keys.key_sum is not None
                       else int8_keys.q8.sum(dim=2, dtype=torch.int32))
            int8_select.select_frames(selector, int8_select.pack_queries(q8), packed,
                                      int8_select.column_offsets(offset, key_sum))
            index, weight = selector.result(mem_key, mem_key_sq, qt, rescore=True)
            return Affinity(index=index, weight=weight)
        if int8_ops is not None:  # integer dot products, keys = dot - offset (M, N) int32
            q8, offset, _ = int8_ops
            s = torch.empty(m, n, dtype=torch.int32)
            s_np, offset_np = s.numpy(), offset.numpy()
            for ti in range(t):
                torch._int_mm(q8, int8_keys.q8[ti].t(), out=s)
                selector.add(s_np, ti, offset_np[ti])
            index, weight = selector.result(mem_key, mem_key_sq, qt, rescore=True)
            return Affinity(index=index, weight=weight)
        # (M, N) similarity of one memory frame; in bf16 the kernel reads the GEMM's output as it is
        s = torch.empty(m, n, dtype=torch.bfloat16 if bf16 else torch.float32)
        similarity = _similarity_writer(mem_key, mem_key_sq, qt, bf16, out_dtype=s.dtype, sel_keys=sel_keys)
        s_np = as_numpy(s)
        for ti in range(t):
            similarity(ti, s)
            selector.add(s_np, ti)
        index, weight = selector.result(mem_key, mem_key_sq, qt, rescore=bf16)
        return Affinity(index=index, weight=weight)
    similarity = _similarity_writer(mem_key, mem_key_sq, qt, bf16, sel_keys=sel_keys)
    logits = torch.empty(m, t, kk, dtype=torch.float32, device=dev)
    if reference == "fixed":
        centre = torch.arange(m, device=dev)[:, None].expand(m, t)  # (M, T): the query's own position
    else:
        centre = torch.empty(m, t, dtype=torch.long, device=dev)
    # similarity of one memory frame in columns 0..N-1, the outside logit in column N
    s_ext = torch.full((m, n + 1), outside_logit, dtype=torch.float32, device=dev)
    s = s_ext[:, :n]
    for ti in range(t):
        similarity(ti, s)  # (M, N)
        if reference == "similarity":  # Eq. 8: most similar memory position per query; Eq. 9: p(i)
            centre[:, ti] = argmax_rows(s)
        torch.gather(s_ext, 1, grid.window_index_ext[centre[:, ti]], out=logits[:, ti])  # (M, k^2)
    logits = logits.reshape(m, t * kk)
    if top_k is not None and top_k < t * kk:
        logits, sel = torch.topk(logits, k=top_k, dim=1)  # (M, top_k) candidates
        frame, slot = sel // kk, sel % kk
        c = centre.gather(1, frame)
        index = grid.window_index[c, slot] + frame * n
        valid = ~grid.window_outside[c, slot]
        if bf16:  # the kept candidates' logits in float32
            logits = exact_logits(mem_key, mem_key_sq, qt, index, valid, outside_logit)
    else:
        frame = torch.arange(t, device=dev)[None, :, None]
        index = (grid.window_index[centre] + frame * n).reshape(m, t * kk)
        valid = ~grid.window_outside[centre].reshape(m, t * kk)
    weight = torch.softmax(logits, dim=1) * valid  # subtracts the max; outside slots hold weight, no value
    return Affinity(index=index, weight=weight)


def readout(affinity: Affinity, table: torch.Tensor) -> torch.Tensor:
    """Weighted sum of memory values: table (T*N, K*C_v) -> (M, K*C_v) float32.

    Few candidates per query: a sparse gather (``embedding_bag``); many: a dense
    (M x T*N) affinity and one GEMM.
    """
    index, weight = affinity.index, affinity.weight
    m, s = index.shape
    if s <= _SPARSE_READOUT_MAX:
        out = F.embedding_bag(index.contiguous(), table, per_sample_weights=weight.contiguous().to(table.dtype),
                              mode="sum")
        return out.float()
    dense = torch.zeros(m, table.shape[0], dtype=torch.float32, device=table.device)
    dense.scatter_add_(1, index, weight)
    return torch.matmul(dense.to(table.dtype), table).float()
