"""Local-window candidate selection in compiled loops (numba), for the CPU.

The torch path of :func:`fsvos.inference.matching.local_affinity` gathers the k^2 window logits
of every memory frame into an (M, T*k^2) tensor (M query positions, T memory frames) and runs
``torch.topk`` over it, then gathers indices, validity and (bf16) exact logits with more index
tensors: about two thirds of the compact model's 14 ms of matching per query frame at 8 memory
frames (bf16, profiled on this project's 2-core machine).  This module keeps the same
candidates and the same top-k without building any of those tensors (``fsvos bench``: matching
13.8 -> 8.5 ms per frame):

* per query row and memory frame it reads the window of the (M, N) similarity map around the
  row's centre (Eq. 8-9: the argmax, computed by NumPy's vectorised ``argmax``; or the query's
  own position), one window row (segment) at a time;
* it computes every segment's maximum first and visits segments best first, stopping as soon
  as no remaining segment can beat the smallest kept logit (a segment's maximum bounds all its
  values, so no candidate is skipped that could enter the top k);
* it keeps each row's top k in a small list sorted in descending order;
* window slots outside the map are candidates with logit ``outside_logit`` and no value, as in
  the torch path; they are stored with a negative index (-1 - position) until the end.

:meth:`WindowSelector.result` then writes the memory positions and the softmax weights; with
``rescore`` it first recomputes the kept candidates' logits exactly in float32 from the keys
(the bf16 precision mode selects on a bf16 similarity).  The loops run on one thread: with a
second thread beside torch's OpenMP workers (which spin between operations) it ran 1.7x
slower on 2 cores.

The result is the torch path's: the same top-k set (ties may be broken otherwise, as
``torch.topk`` leaves them unspecified) and the same weights up to float32 rounding; the tests
compare the two.  Without numba (``available()`` False) or with ``FSVOS_FUSED_SELECT=0`` in the
environment, the torch path runs.
"""

from __future__ import annotations

import math
import os
from typing import Tuple

import numpy as np
import torch

try:  # numba is a dependency; the torch path stays for environments without it
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def available() -> bool:
    """True if the compiled selection can run (numba importable, not disabled by the environment)."""
    return numba is not None and os.environ.get("FSVOS_FUSED_SELECT", "1") != "0"


if numba is not None:
    _jit = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    # The loops index 2-D arrays with (row, column) rather than taking row views, which numba
    # reference-counts.

    @numba.njit(fastmath=True, inline="always", **_jit)
    def _segment_max(s, m, a, b):
        """max(s[m, a:b]), b > a."""
        best = s[m, a]
        for x in range(a + 1, b):
            v = s[m, x]
            best = v if v > best else best
        return best

    @numba.njit(inline="always", **_jit)
    def _push(kept_logit, kept_index, m, count, value, index):
        """Insert a candidate into row m's kept list, sorted in descending order; returns the new
        count.  When the list is full (the caller checks the candidate beats its last), the
        smallest falls off."""
        pos = min(count, kept_logit.shape[1] - 1)
        while pos > 0 and kept_logit[m, pos - 1] < value:
            kept_logit[m, pos] = kept_logit[m, pos - 1]
            kept_index[m, pos] = kept_index[m, pos - 1]
            pos -= 1
        kept_logit[m, pos] = value
        kept_index[m, pos] = index
        return min(count + 1, kept_logit.shape[1])

    @numba.njit(**_jit)
    def _select_frame(s, centre, centre_is_max, frame, h, w, radius, outside_logit, kept_logit, kept_index, count):
        """Merge memory frame ``frame``'s window candidates into every row's kept list.

        s: (M, N) float32 similarity of that frame, N = h*w; centre: (M,) window centres (flat
        positions), each row's argmax when centre_is_max; kept_logit (M, K) float32, kept_index
        (M, K) int64, count (M,) int32 are updated in place.  kept_index holds frame*N + position,
        or -1 - (frame*N + centre) for a slot outside the map.
        """
        k = kept_logit.shape[1]
        side = 2 * radius + 1
        n = h * w
        seg_max = np.empty(side, np.float32)
        for m in range(s.shape[0]):
            cnt = count[m]
            c = centre[m]
            # a centre that is the row's argmax is the frame's best candidate: skip a frame that cannot enter
            if centre_is_max and cnt == k and s[m, c] <= kept_logit[m, k - 1] and outside_logit <= kept_logit[m, k - 1]:
                continue
            cy = c // w
            cx = c - cy * w
            x0 = max(cx - radius, 0)
            x1 = min(cx + radius, w - 1)
            y0 = max(cy - radius, 0)
            y1 = min(cy + radius, h - 1)
            rows = y1 - y0 + 1
            outside = side * side - rows * (x1 - x0 + 1)
            for i in range(rows):
                base = (y0 + i) * w
                seg_max[i] = _segment_max(s, m, base + x0, base + x1 + 1)
            while True:  # best segment first, until none can beat the smallest kept logit
                best = 0
                best_value = seg_max[0]
                for i in range(1, rows):
                    v = seg_max[i]
                    better = v > best_value
                    best = i if better else best
                    best_value = v if better else best_value
                if best_value == -np.inf or (cnt == k and best_value <= kept_logit[m, k - 1]):
                    break
                seg_max[best] = -np.inf
                base = (y0 + best) * w
                for x in range(base + x0, base + x1 + 1):
                    v = s[m, x]
                    if cnt < k or v > kept_logit[m, k - 1]:
                        cnt = _push(kept_logit, kept_index, m, cnt, v, frame * n + x)
            for i in range(outside):
                if cnt < k or outside_logit > kept_logit[m, k - 1]:
                    cnt = _push(kept_logit, kept_index, m, cnt, outside_logit, -1 - (frame * n + c))
                else:
                    break
            count[m] = cnt

    @numba.njit(fastmath=True, inline="always", **_jit)
    def _dot(a, i, b, j):
        """a[i] . b[j] of two 2-D arrays with the same row length."""
        total = np.float32(0.0)
        for c in range(a.shape[1]):
            total += a[i, c] * b[j, c]
        return total

    @numba.njit(**_jit)
    def _finish_rows(kept_logit, kept_index, keys, key_sq, query, scale, rescore, outside_logit,
                     index_out, weight_out):
        """Memory positions and softmax weights of every row's kept candidates.

        keys (T*N, C_k) position-major, key_sq (T*N,), query (M, C_k) float32: with ``rescore``
        the kept candidates' logits are recomputed in float32, s = (2 k.q - |k|^2) * scale.
        Outside slots keep ``outside_logit`` and get weight 0 after the softmax (they hold
        weight, no value).
        """
        k = kept_logit.shape[1]
        for m in range(kept_logit.shape[0]):
            for i in range(k):
                j = kept_index[m, i]
                valid = j >= 0
                pos = j if valid else -1 - j
                index_out[m, i] = pos
                if rescore:
                    kept_logit[m, i] = (np.float32(2.0) * _dot(keys, pos, query, m) - key_sq[pos]) * scale if valid \
                        else outside_logit
            top = kept_logit[m, 0]
            for i in range(1, k):
                top = max(top, kept_logit[m, i])
            total = np.float32(0.0)
            for i in range(k):
                e = np.exp(kept_logit[m, i] - top)
                weight_out[m, i] = e
                total += e
            for i in range(k):
                weight_out[m, i] = weight_out[m, i] / total if kept_index[m, i] >= 0 else np.float32(0.0)


class WindowSelector:
    """Top-k local-window candidates of one query frame, memory frame by memory frame.

    m: query positions; top_k: candidates kept per query; h, w: the stride-16 map; window: k
    (odd); outside_logit: logit of window slots outside the map; similarity_centre: centre each
    window on the row's argmax (Eq. 8-9) or, if False, on the query's own position.
    """

    def __init__(self, m: int, top_k: int, h: int, w: int, window: int, outside_logit: float,
                 similarity_centre: bool = True):
        if numba is None:
            raise RuntimeError("the compiled window selection needs numba")
        self.h, self.w, self.radius = h, w, window // 2
        self.outside_logit = np.float32(outside_logit)
        self.similarity_centre = similarity_centre
        self.kept_logit = np.empty((m, top_k), np.float32)
        self.kept_index = np.empty((m, top_k), np.int64)
        self.count = np.zeros(m, np.int32)
        self.centre = np.empty(m, np.int64) if similarity_centre else np.arange(m, dtype=np.int64)

    def add(self, similarity: np.ndarray, frame: int) -> None:
        """Merge memory frame ``frame``'s candidates; similarity: (M, N) float32, C-contiguous."""
        if self.similarity_centre:
            np.argmax(similarity, axis=1, out=self.centre)  # Eq. 8 (vectorised; torch's argmax is not)
        _select_frame(similarity, self.centre, self.similarity_centre, frame, self.h, self.w, self.radius,
                      self.outside_logit, self.kept_logit, self.kept_index, self.count)

    def result(self, mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key_t: torch.Tensor,
               rescore: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(index (M, top_k) long into the T*N memory positions, weight (M, top_k) float32).

        mem_key (T, C_k, N), mem_key_sq (T, N), query_key_t (M, C_k) float32 CPU tensors; with
        ``rescore`` the kept candidates' logits are recomputed exactly before the softmax.
        """
        t, ck, n = mem_key.shape
        keys = mem_key.transpose(1, 2).reshape(t * n, ck).numpy()  # no copy from the memory bank's layout
        key_sq = mem_key_sq.reshape(t * n).numpy()
        query = query_key_t.contiguous().numpy()
        scale = np.float32(1.0 / math.sqrt(query.shape[1]))
        index = np.empty_like(self.kept_index)
        weight = np.empty(self.kept_logit.shape, np.float32)
        _finish_rows(self.kept_logit, self.kept_index, keys, key_sq, query, scale, rescore, self.outside_logit,
                     index, weight)
        return torch.from_numpy(index), torch.from_numpy(weight)
