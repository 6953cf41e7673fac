"""Training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class BootstrappedCE(torch.nn.Module):
    """Cross-entropy averaged over the hardest ``top_p`` fraction of pixels (STCN).

    Plain CE until ``start_warm`` steps, then top_p falls linearly from 1 to ``top_p`` at
    ``end_warm``.  logits (B, C, H, W), target long (B, H, W).  Returns (loss, p used).
    """

    def __init__(self, start_warm: int = 2000, end_warm: int = 8000, top_p: float = 0.15):
        super().__init__()
        self.start_warm, self.end_warm, self.top_p = start_warm, end_warm, top_p

    def forward(self, logits: torch.Tensor, target: torch.Tensor, step: int):
        if step < self.start_warm:
            return F.cross_entropy(logits, target), 1.0
        raw = F.cross_entropy(logits, target, reduction="none").flatten()
        if step > self.end_warm:
            p = self.top_p
        else:
            p = self.top_p + (1 - self.top_p) * (self.end_warm - step) / (self.end_warm - self.start_warm)
        k = max(1, int(raw.numel() * p))
        return torch.topk(raw, k, sorted=False).values.mean(), p
