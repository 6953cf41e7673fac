"""Local-window candidate selection in compiled loops (numba), for the CPU.

The torch path of :func:`fsvos.inference.matching.local_affinity` gathers the k^2 window logits
of every memory frame into an (M, T*k^2) tensor (M query positions, T memory frames) and runs
``torch.topk`` over it, then gathers indices, validity and (bf16) exact logits with more index
tensors: about two thirds of the compact model's 14 ms of matching per query frame at 8 memory
frames (bf16, profiled on this project's 2-core machine).  This module keeps the same
candidates and the same top-k without building any of those tensors (``fsvos bench``: matching
13.8 -> 8.5 ms per frame):

* it reads the similarity of one memory frame as the GEMM wrote it: float32, or in the bf16
  precision mode the bf16 product itself (as uint16 bits; no float32 copy), or the int32
  product of int8 keys and queries, whose keys are the products minus a per-position offset
  (the bf16 mode's default with local matching on the CPU, see
  :func:`~fsvos.inference.matching.local_affinity`);
* values are compared as integer order keys (:func:`fsvos.model.numba_bf16.order_key`), so the
  argmax of each row (Eq. 8-9, the window centre; or the query's own position) is a vectorised
  maximum over blocks of 64 keys, 32 bf16 keys per AVX-512 instruction (4x faster than NumPy's
  float32 ``argmax`` on the copy it replaces);
* a frame whose best candidate (the argmax) cannot enter a full list is skipped;
* otherwise it reads the window around the centre one row at a time, from the centre row
  outwards, and inserts every value that beats the row's smallest kept one into a small list
  of the top k sorted in descending order;
* window slots outside the map are candidates with logit ``outside_logit`` and no value, as in
  the torch path; they are stored with a negative index (-1 - position) until the end.

With bf16 similarities this took the compact model's matching from 11.6 to 8.9 ms per frame at
8 memory frames (``fsvos bench``, bf16, same hour).

:meth:`WindowSelector.result` then writes the memory positions and the softmax weights; with
``rescore`` it first recomputes the kept candidates' logits exactly in float32 from the keys
(the bf16 precision mode selects on a bf16 similarity or on int8 keys).

Both loops split the query rows over torch's threads (numba ``prange``; each row's list is
merged by one thread, so the result does not depend on the thread count) when numba runs them
on its OpenMP threading layer (:mod:`fsvos.numba_threads` says why only there).  In one
process alternating one and two threads (60-frame 512-px cine, 3 objects, medians of 6 runs on
this project's 2-core machine): matching 7.6 -> 5.2 ms per frame in bf16, 10.1 -> 8.4 in fp32,
the encoders and the decoder unchanged.  The similarity of one memory frame is still read right
after its GEMM wrote it (2 MB in bf16, in cache): GEMMs of 8 frames first, then one parallel
call over them, made matching slower.

The result is the torch path's: the same top-k set (ties may be broken otherwise, as
``torch.topk`` leaves them unspecified) and the same weights up to float32 rounding; the tests
compare the two.  Without numba (``available()`` False) or with ``FSVOS_FUSED_SELECT=0`` in the
environment, the torch path runs.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np
import torch

from ..numba_threads import numba, threads_for_loop


def available() -> bool:
    """True if the compiled selection can run (numba importable, not disabled by the environment)."""
    return numba is not None and os.environ.get("FSVOS_FUSED_SELECT", "1") != "0"


if numba is not None:
    from numba.core import types
    from numba.extending import overload

    from ..model.numba_bf16 import key_value, narrow, order_key

    _jit = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)
    _ARGMAX_BLOCK = 64  # the argmax finds the first block holding the maximum, then scans it
    _CHUNKS_PER_THREAD = 4  # query-row ranges per thread in the parallel loops
    _NO_KEY = np.int32(-2147483648)  # below every key: any candidate enters a list not yet full

    # The loops index rows through 1-D views (r = s[m]), which LLVM vectorises; the kept lists are
    # indexed with (row, column).  Values are compared as order keys (numba_bf16.order_key):
    # int16 for bf16 similarities, int32 for float32 ones; an int32 similarity (integer dot
    # products of int8 keys) minus the column's offset is its own key (_key).

    def _key(r, col, x):  # pragma: no cover - compiled code uses the overload below
        """The order key of candidate x of the row r: order_key(r[x]), or for an int32 row
        r[x] - col[x] (col: the columns' integer offsets, unused otherwise)."""
        raise NotImplementedError("_key is for numba-compiled code")

    @overload(_key, inline="always")
    def _key_overload(r, col, x):
        if r.dtype == types.int32:
            return lambda r, col, x: r[x] - col[x]
        return lambda r, col, x: order_key(r[x])

    @numba.njit(inline="always", **_jit)
    def _row_argmax(r, col, block_key):
        """(first index of the maximum key of the 1-D row r, that key); col: as for _key.
        block_key: scratch (len(r) // _ARGMAX_BLOCK,) of the key type; len(r) >= _ARGMAX_BLOCK."""
        n = r.shape[0]
        blocks = n // _ARGMAX_BLOCK
        for b in range(blocks):  # one vectorised maximum per block (a slice: LLVM vectorises it)
            block = r[b * _ARGMAX_BLOCK:(b + 1) * _ARGMAX_BLOCK]
            block_col = col[b * _ARGMAX_BLOCK:(b + 1) * _ARGMAX_BLOCK]  # empty unless int32
            top = _key(block, block_col, 0)
            for j in range(_ARGMAX_BLOCK):
                top = max(top, _key(block, block_col, j))
            block_key[b] = top
        best = block_key[0]
        for b in range(1, blocks):
            best = max(best, block_key[b])
        start = n
        for x in range(blocks * _ARGMAX_BLOCK, n):  # a tail past the last block
            key = _key(r, col, x)
            if key > best:
                best, start = key, x
        if start == n:  # the first block holding the maximum, then its first position
            b = 0
            while block_key[b] != best:
                b += 1
            start = b * _ARGMAX_BLOCK
            while _key(r, col, start) != best:
                start += 1
        return start, best

    @numba.njit(inline="always", **_jit)
    def _short_row_argmax(r, col):
        """As _row_argmax for rows shorter than a block."""
        best = _key(r, col, 0)
        at = 0
        for x in range(1, r.shape[0]):
            key = _key(r, col, x)
            if key > best:
                best, at = key, x
        return at, best

    @numba.njit(inline="always", **_jit)
    def _window_bounds(c, h, w, radius):
        """(row of the centre, first and last column, first and last row) of the window around
        the flat position c of an h x w map, clipped to the map."""
        cy = c // w
        cx = c - cy * w
        return cy, max(cx - radius, 0), min(cx + radius, w - 1), max(cy - radius, 0), min(cy + radius, h - 1)

    @numba.njit(inline="always", **_jit)
    def _window_row(cy, step):
        """The window row read at ``step``: cy, cy + 1, cy - 1, cy + 2, ... (the similarity peaks near
        the centre, so the kept list's smallest key rises fast and few candidates are inserted)."""
        d = (step + 1) // 2
        return cy + d if step % 2 == 1 else cy - d

    @numba.njit(inline="always", **_jit)
    def _push(kept_key, kept_index, m, count, key, index):
        """Insert a candidate into row m's kept list, sorted in descending order; returns the new
        count.  When the list is full (the caller checks the candidate beats its last), the
        smallest falls off."""
        pos = min(count, kept_key.shape[1] - 1)
        while pos > 0 and kept_key[m, pos - 1] < key:
            kept_key[m, pos] = kept_key[m, pos - 1]
            kept_index[m, pos] = kept_index[m, pos - 1]
            pos -= 1
        kept_key[m, pos] = key
        kept_index[m, pos] = index
        return min(count + 1, kept_key.shape[1])

    @numba.njit(inline="always", **_jit)
    def _select_rows(s, col, m0, m1, centre, similarity_centre, frame, h, w, radius, outside_key, kept_key,
                     kept_index, count, block_key):
        """Merge memory frame ``frame``'s window candidates into the kept lists of query rows
        m0..m1-1 (each row's list depends on that row alone, so row ranges can run in parallel).

        s: (M, N) similarity of that frame, N = h*w, float32, bf16 bits (uint16) or int32 (integer
        dot products, whose keys are s - col, col (N,) int32), C-contiguous;
        centre: (M,) int64 window centres (flat positions), written here as each row's argmax
        when similarity_centre (Eq. 8), else read (the query's own position); outside_key: the
        order key of the outside slots' logit; kept_key (M, K) int32 (order keys), kept_index
        (M, K) int64 and count (M,) int32 are updated in place.  kept_index holds frame*N +
        position, or -1 - (frame*N + centre) for a slot outside the map.  block_key: scratch
        (N // _ARGMAX_BLOCK,) of the key type (int16 for bf16, int32 for float32).

        Window rows are visited from the centre row outwards: the similarity peaks near the
        centre, so the kept list's smallest key rises fast and few candidates are inserted.
        (Skipping rows by a bound on their keys, a vectorised maximum of 16 values, cost more
        than comparing the row's 15 keys one by one.)
        """
        k = kept_key.shape[1]
        side = 2 * radius + 1
        n = h * w
        for m in range(m0, m1):
            r = s[m]
            cnt = count[m]
            if similarity_centre:
                c, top = _row_argmax(r, col, block_key) if n >= _ARGMAX_BLOCK else _short_row_argmax(r, col)
                centre[m] = c
                # the argmax is the frame's best candidate: skip a frame that cannot enter
                if cnt == k and top <= kept_key[m, k - 1] and outside_key <= kept_key[m, k - 1]:
                    continue
            else:
                c = centre[m]
            cy, x0, x1, y0, y1 = _window_bounds(c, h, w, radius)
            least = kept_key[m, k - 1] if cnt == k else _NO_KEY  # a candidate must beat it
            for step in range(side):  # window rows cy, cy+1, cy-1, cy+2, ...
                y = _window_row(cy, step)
                if y < y0 or y > y1:
                    continue
                base = y * w
                for x in range(base + x0, base + x1 + 1):
                    key = _key(r, col, x)
                    if key > least:
                        cnt = _push(kept_key, kept_index, m, cnt, key, frame * n + x)
                        least = kept_key[m, k - 1] if cnt == k else _NO_KEY
            outside = side * side - (y1 - y0 + 1) * (x1 - x0 + 1)
            for i in range(outside):
                if cnt < k or outside_key > kept_key[m, k - 1]:
                    cnt = _push(kept_key, kept_index, m, cnt, outside_key, -1 - (frame * n + c))
                else:
                    break
            count[m] = cnt

    @numba.njit(**_jit)
    def _select_frame(s, col, frame, centre, similarity_centre, h, w, radius, outside_key, kept_key, kept_index,
                      count, block_key):
        """_select_rows over every query row, on one thread."""
        _select_rows(s, col, 0, s.shape[0], centre, similarity_centre, frame, h, w, radius, outside_key, kept_key,
                     kept_index, count, block_key)

    @numba.njit(parallel=True, **_jit)
    def _select_frame_parallel(s, col, frame, chunks, centre, similarity_centre, h, w, radius, outside_key, kept_key,
                               kept_index, count, block_key):
        """_select_rows on numba's threads, the query rows in ``chunks`` ranges (each with its own
        argmax scratch, shaped as block_key)."""
        m = s.shape[0]
        for c in numba.prange(chunks):
            _select_rows(s, col, c * m // chunks, (c + 1) * m // chunks, centre, similarity_centre, frame, h, w,
                         radius, outside_key, kept_key, kept_index, count, np.empty_like(block_key))

    @numba.njit(**_jit)
    def _order_key_of(value, like):
        """The order key of the float32 ``value`` stored as an element of ``like`` (bf16: rounded
        to nearest even)."""
        return np.int32(order_key(narrow(value, like)))

    @numba.njit(fastmath=True, **_jit)
    def _dot(a, b):
        """a . b of two 1-D float32 arrays of the same length (vectorised: its own fastmath flags
        allow reordering the sum; inlined at numba's level it would take the caller's flags and
        stay a serial chain, 3x slower)."""
        total = np.float32(0.0)
        for c in range(a.shape[0]):
            total += a[c] * b[c]
        return total

    @numba.njit(inline="always", **_jit)
    def _finish_row_range(m0, m1, kept_key, kept_index, like, keys, key_sq, query, scale, rescore, outside_logit,
                          index_out, weight_out):
        """Memory positions and softmax weights of the kept candidates of rows m0..m1-1.

        kept_key: order keys of elements like those of ``like`` (the similarity's dtype); keys
        (T*N, C_k) position-major, key_sq (T*N,), query (M, C_k) float32: with ``rescore`` the
        kept candidates' logits are recomputed in float32, s = (2 k.q - |k|^2) * scale; without,
        they are the keys' values.  Outside slots keep ``outside_logit`` and get weight 0 after
        the softmax (they hold weight, no value).
        """
        k = kept_key.shape[1]
        logit = np.empty(k, np.float32)
        for m in range(m0, m1):
            q = query[m]
            for i in range(k):
                j = kept_index[m, i]
                valid = j >= 0
                pos = j if valid else -1 - j
                index_out[m, i] = pos
                if not valid:
                    logit[i] = outside_logit
                elif rescore:
                    logit[i] = (np.float32(2.0) * _dot(keys[pos], q) - key_sq[pos]) * scale
                else:
                    logit[i] = key_value(kept_key[m, i], like)
            top = logit[0]
            for i in range(1, k):
                top = max(top, logit[i])
            total = np.float32(0.0)
            for i in range(k):
                e = np.exp(logit[i] - top)
                weight_out[m, i] = e
                total += e
            for i in range(k):
                weight_out[m, i] = weight_out[m, i] / total if kept_index[m, i] >= 0 else np.float32(0.0)

    @numba.njit(**_jit)
    def _finish_rows(kept_key, kept_index, like, keys, key_sq, query, scale, rescore, outside_logit,
                     index_out, weight_out):
        """_finish_row_range over every row, on one thread."""
        _finish_row_range(0, kept_key.shape[0], kept_key, kept_index, like, keys, key_sq, query, scale, rescore,
                          outside_logit, index_out, weight_out)

    @numba.njit(parallel=True, **_jit)
    def _finish_rows_parallel(chunks, kept_key, kept_index, like, keys, key_sq, query, scale, rescore,
                              outside_logit, index_out, weight_out):
        """_finish_row_range on numba's threads, the rows in ``chunks`` ranges."""
        m = kept_key.shape[0]
        for c in numba.prange(chunks):
            _finish_row_range(c * m // chunks, (c + 1) * m // chunks, kept_key, kept_index, like, keys, key_sq,
                              query, scale, rescore, outside_logit, index_out, weight_out)


class WindowSelector:
    """Top-k local-window candidates of one query frame, memory frame by memory frame.

    m: query positions; top_k: candidates kept per query; h, w: the stride-16 map; window: k
    (odd); outside_logit: logit of window slots outside the map; similarity_centre: centre each
    window on the row's argmax (Eq. 8-9) or, if False, on the query's own position; threads:
    threads of the compiled loops, None = :func:`fsvos.numba_threads.threads` at each call (the
    result does not depend on it: each query row is merged by one thread); int_unit: for int32
    similarities (integer dot products of int8 keys, :meth:`add`), the logit of one integer unit
    of their keys, which places the outside slots' logit among them.
    """

    def __init__(self, m: int, top_k: int, h: int, w: int, window: int, outside_logit: float,
                 similarity_centre: bool = True, threads: Optional[int] = None,
                 int_unit: Optional[float] = None):
        if numba is None:
            raise RuntimeError("the compiled window selection needs numba")
        if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, not {threads}")
        self.threads = threads
        self.h, self.w, self.radius = h, w, window // 2
        self.outside_logit = np.float32(outside_logit)
        self.similarity_centre = similarity_centre
        self.kept_key = np.empty((m, top_k), np.int32)
        self.kept_index = np.empty((m, top_k), np.int64)
        self.count = np.zeros(m, np.int32)
        self.centre = np.empty(m, np.int64) if similarity_centre else np.arange(m, dtype=np.int64)
        self._dtype = None  # the similarities' dtype, fixed by the first frame added
        if int_unit is not None and not (math.isfinite(int_unit) and int_unit > 0):
            raise ValueError(f"int_unit must be a positive number, not {int_unit}")
        self.int_unit = int_unit

    def _start(self, dtype: np.dtype, n: int) -> None:
        """Fix the similarities' dtype (that of the first frame; n: positions per memory frame)."""
        if dtype not in (np.float32, np.uint16, np.int32):
            raise TypeError(f"similarity must be float32, bf16 bits (uint16) or int32, not {dtype}")
        if dtype == np.int32 and self.int_unit is None:
            raise ValueError("int32 similarities need the selector's int_unit")
        self._dtype = np.dtype(dtype)
        if self._dtype == np.int32:
            self._outside_key = np.int32(np.clip(np.round(self.outside_logit / self.int_unit), _NO_KEY + 1,
                                                 np.iinfo(np.int32).max))  # -inf: below every candidate
        else:
            self._outside_key = _order_key_of(self.outside_logit, np.empty(0, self._dtype))
        self._block_key = np.empty(max(1, n // _ARGMAX_BLOCK), np.int16 if self._dtype == np.uint16 else np.int32)

    def add(self, similarity: np.ndarray, frame: int, column_offset: Optional[np.ndarray] = None) -> None:
        """Merge memory frame ``frame``'s candidates; similarity: (M, N) C-contiguous, float32 or
        bfloat16 bits as uint16 (``numba_bf16.as_numpy(tensor)``), or int32 integer dot products
        whose keys are ``similarity - column_offset`` ((N,) int32; the selector needs ``int_unit``);
        the same dtype for every frame."""
        if self._dtype is None:
            self._start(similarity.dtype, similarity.shape[1])
        elif similarity.dtype != self._dtype:
            raise TypeError(f"similarity dtype changed from {self._dtype} to {similarity.dtype}")
        if self._dtype == np.int32:
            if column_offset is None or column_offset.dtype != np.int32 or column_offset.shape != similarity.shape[1:]:
                raise ValueError(f"int32 similarities need an int32 column_offset of shape {similarity.shape[1:]}")
            col = column_offset
        else:
            col = self._block_key[:0]  # unused
        args = (self.centre, self.similarity_centre, self.h, self.w, self.radius, self._outside_key, self.kept_key,
                self.kept_index, self.count, self._block_key)
        n = threads_for_loop(self.threads)
        if n > 1:
            _select_frame_parallel(similarity, col, frame, n * _CHUNKS_PER_THREAD, *args)
        else:
            _select_frame(similarity, col, frame, *args)

    def result(self, mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key_t: torch.Tensor,
               rescore: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(index (M, top_k) long into the T*N memory positions, weight (M, top_k) float32).

        mem_key (T, C_k, N), mem_key_sq (T, N), query_key_t (M, C_k) float32 CPU tensors; with
        ``rescore`` the kept candidates' logits are recomputed exactly before the softmax (needed
        after bf16 similarities: without it their bf16 values are the logits; always after int32
        ones, whose keys are not logits).
        """
        if self._dtype == np.int32 and not rescore:
            raise ValueError("candidates selected on int32 similarities must be re-scored")
        t, ck, n = mem_key.shape
        keys = mem_key.transpose(1, 2).reshape(t * n, ck).numpy()  # no copy from the memory bank's layout
        key_sq = mem_key_sq.reshape(t * n).numpy()
        query = query_key_t.contiguous().numpy()
        scale = np.float32(1.0 / math.sqrt(query.shape[1]))
        index = np.empty_like(self.kept_index)
        weight = np.empty(self.kept_key.shape, np.float32)
        like = np.empty(0, self._dtype if self._dtype is not None else np.float32)
        args = (self.kept_key, self.kept_index, like, keys, key_sq, query, scale, rescore, self.outside_logit,
                index, weight)
        n = threads_for_loop(self.threads)
        if n > 1:
            _finish_rows_parallel(n * _CHUNKS_PER_THREAD, *args)
        else:
            _finish_rows(*args)
        return torch.from_numpy(index), torch.from_numpy(weight)
