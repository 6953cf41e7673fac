"""Differentiable local matching for training (dense form of the inference kernel).

Equals :func:`fsvos.inference.matching.local_affinity` with ``reference="fixed"`` and
``top_k=None``: the window restriction is an additive -inf mask on a dense (T*N x M)
affinity, and the window slots that fall outside the map (zero key, zero value,
logit -1 in the released code) enter the softmax as one extra candidate per query
with logit log(count) - 1.
"""

from __future__ import annotations

import math

import torch


def window_mask(h: int, w: int, window: int, device) -> torch.Tensor:
    """bool (N, M): memory position n lies in the k x k window centred on query position m."""
    pos = torch.arange(h * w, device=device)
    y, x = pos // w, pos % w
    r = window // 2
    return ((y[:, None] - y[None, :]).abs() <= r) & ((x[:, None] - x[None, :]).abs() <= r)


def local_readout(mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor, h: int, w: int,
                  window: int, outside_logit: float = -1.0) -> torch.Tensor:
    """mem_key (B, C_k, T, N), mem_value (B, K, C_v, T, N), query_key (B, C_k, M) -> readout (B, K, C_v, M)."""
    b, ck, t, n = mem_key.shape
    logits = (2 * torch.einsum("bctn,bcm->btnm", mem_key, query_key)
              - mem_key.pow(2).sum(1)[..., None]) / math.sqrt(ck)  # (B, T, N, M)
    inside = window_mask(h, w, window, mem_key.device)
    logits = logits.masked_fill(~inside, float("-inf")).reshape(b, t * n, -1)
    n_out = (window * window - inside.sum(0)).float()  # outside slots per memory frame (M,)
    extra = torch.where(n_out > 0, torch.log(n_out * t) + outside_logit, torch.full_like(n_out, float("-inf")))
    all_logits = torch.cat([logits, extra[None, None].expand(b, 1, -1)], dim=1)
    affinity = torch.softmax(all_logits, dim=1)[:, :t * n]  # (B, T*N, M)
    kk, cv = mem_value.shape[1:3]
    return torch.einsum("bkcx,bxm->bkcm", mem_value.reshape(b, kk, cv, t * n), affinity)
