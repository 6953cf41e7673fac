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
from the (N x M) similarity of each memory frame (a GEMM on 64-d keys), and the
readout either gathers the top-k values per query (``embedding_bag``, a sparse
weighted sum) or scatters the weights into a dense (T*N x M) affinity and does
one GEMM with the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

#: above this many candidates per query the readout uses a dense affinity + GEMM
_SPARSE_READOUT_MAX = 64


@dataclass
class Affinity:
    """Sparse affinity: readout[:, m] = sum_s weight[s, m] * values[index[s, m]].

    index: long (S, M) into the memory's T*N positions; weight: float32 (S, M),
    each column sums to 1 over the candidates kept (slots outside the map hold
    weight but no value).
    """

    index: torch.Tensor
    weight: torch.Tensor


class WindowGrid:
    """Offsets of a k x k window on an h x w map, in the order of ``Tensor.unfold`` (row-major)."""

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

    def gather_index(self, cy: torch.Tensor, cx: torch.Tensor):
        """Window positions around centres (M,) -> flat index (k^2, M) (clamped) and validity (k^2, M)."""
        y = cy[None, :] + self.dy[:, None]
        x = cx[None, :] + self.dx[:, None]
        valid = (y >= 0) & (y < self.h) & (x >= 0) & (x < self.w)
        index = y.clamp(0, self.h - 1) * self.w + x.clamp(0, self.w - 1)
        return index, valid


def similarity(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """(2 k.q - |k|^2)/sqrt(C_k): mem_key (T, C_k, N), mem_key_sq (T, N), query_key (C_k, M) -> (T, N, M)."""
    ck = query_key.shape[0]
    ab = torch.matmul(mem_key.transpose(1, 2), query_key)  # (T, N, M)
    return (2.0 * ab - mem_key_sq[:, :, None]) / math.sqrt(ck)


def _softmax_topk(logits: torch.Tensor, index: torch.Tensor, valid: Optional[torch.Tensor],
                  top_k: Optional[int]) -> Affinity:
    """One softmax over the candidate dim 0 of (S, M) logits, optionally over the top_k largest only."""
    if top_k is not None and top_k < logits.shape[0]:
        logits, sel = torch.topk(logits, k=top_k, dim=0)
        index = index.gather(0, sel)
        valid = None if valid is None else valid.gather(0, sel)
    weight = torch.softmax(logits, dim=0)  # subtracts the max
    if valid is not None:
        weight = weight * valid
    return Affinity(index=index, weight=weight)


def global_affinity(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key: torch.Tensor,
                    top_k: Optional[int]) -> Affinity:
    """STCN global matching over all T*N memory positions."""
    t, _, n = mem_key.shape
    logits = similarity(mem_key, mem_key_sq, query_key).reshape(t * n, -1)  # (T*N, M)
    m = logits.shape[1]
    index = torch.arange(t * n, device=logits.device)[:, None].expand(t * n, m)
    return _softmax_topk(logits, index, None, top_k)


def local_affinity(mem_key: torch.Tensor, mem_key_sq: torch.Tensor, query_key: torch.Tensor,
                   grid: WindowGrid, reference: str, top_k: Optional[int],
                   outside_logit: float = -1.0) -> Affinity:
    """Local matching: a k x k window per memory frame, centred per ``reference``."""
    t, _, n = mem_key.shape
    logits_all = []
    index_all = []
    valid_all = []
    for ti in range(t):  # one memory frame at a time bounds the (N x M) temporary
        s = similarity(mem_key[ti:ti + 1], mem_key_sq[ti:ti + 1], query_key)[0]  # (N, M)
        if reference == "fixed":
            cy, cx = grid.qy, grid.qx
        elif reference == "similarity":
            best = s.argmax(dim=0)  # Eq. 8: most similar memory position per query (M,)
            cy, cx = best // grid.w, best % grid.w  # Eq. 9: p(i) = pos(k_j*)
        else:
            raise ValueError(f"unknown reference {reference!r}")
        index, valid = grid.gather_index(cy, cx)  # (k^2, M)
        logits = s.gather(0, index)
        logits = torch.where(valid, logits, torch.full_like(logits, outside_logit))
        logits_all.append(logits)
        index_all.append(index + ti * n)
        valid_all.append(valid)
    return _softmax_topk(torch.cat(logits_all), torch.cat(index_all), torch.cat(valid_all), top_k)


def readout(affinity: Affinity, table: torch.Tensor) -> torch.Tensor:
    """Weighted sum of memory values: table (T*N, K*C_v) -> (M, K*C_v) float32.

    Few candidates per query: a sparse gather (``embedding_bag``); many: a dense
    (T*N x M) affinity and one GEMM.
    """
    index, weight = affinity.index, affinity.weight
    s, m = index.shape
    if s <= _SPARSE_READOUT_MAX:
        out = F.embedding_bag(index.t().contiguous(), table, per_sample_weights=weight.t().contiguous().to(table.dtype),
                              mode="sum")
        return out.float()
    dense = torch.zeros(table.shape[0], m, dtype=torch.float32, device=table.device)
    dense.scatter_add_(0, index, weight)
    return torch.matmul(dense.t().to(table.dtype), table).float()
