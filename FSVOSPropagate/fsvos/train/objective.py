"""The training objective: one triplet forward pass and the weighted sum of the losses.

:class:`Objective` is an ``nn.Module`` holding the network and the training-only parts
(the contrastive projection head), so that one ``forward`` covers every parameter that
gets a gradient - what DistributedDataParallel needs.

    loss = ce * sum_{frames 1, 2 with labels} BootstrappedCE
         + contrastive * C (Eq. 12)  + temporal * L_tc (TCMN Eq. 1)
         + consistency * L_cons (frames 1 and 2, neighbours, not both labelled)
         + jaccard * sum_{frames 1, 2 with labels} (1 - soft IoU), mean over objects

A loss whose weight is 0 is not computed at all (nothing extra runs, no random numbers
are drawn), so ``ce = 1`` alone is exactly the original STCN objective.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple

import torch

from ..model.network import FSVOSNet
from .config import TrainConfig
from .losses import (BootstrappedCE, ObjectContrastiveLoss, neighbour_consistency_loss, soft_jaccard_loss,
                     temporal_contrastive_loss)
from .step import forward_triplet


def _labelled_targets(logits, labels: torch.Tensor, selector: torch.Tensor, labelled: torch.Tensor):
    """(logits, labels, selector) of frames 1 and 2 restricted to the samples where that frame is
    labelled (the whole batch, unsliced, when every frame 1 and 2 is); frames labelled in no
    sample are left out."""
    all_labelled = bool(labelled[:, 1:].all())
    for i, lg in enumerate(logits, start=1):
        if all_labelled:
            yield lg, labels[:, i], selector
            continue
        rows = labelled[:, i]
        if bool(rows.any()):
            yield lg[rows], labels[rows, i], selector[rows]


class Objective(torch.nn.Module):
    def __init__(self, net: FSVOSNet, cfg: TrainConfig):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.ce_loss = BootstrappedCE(cfg.bootstrap_start, cfg.bootstrap_end, cfg.top_p)
        self.contrastive: Optional[ObjectContrastiveLoss] = None
        if cfg.contrastive > 0:
            self.contrastive = ObjectContrastiveLoss(net.arch.key_dim, cfg.contrastive_dim, cfg.contrastive_tau,
                                                     cfg.contrastive_min_fraction, cfg.contrastive_max_per_object)

    def heads(self) -> Optional[torch.nn.Module]:
        """The training-only modules (saved in last.pth, never in the network's weights)."""
        return self.contrastive

    def forward(self, frames: torch.Tensor, labels: torch.Tensor, selector: torch.Tensor, labelled: torch.Tensor,
                gap: torch.Tensor, step: int, autocast=None) -> Tuple[torch.Tensor, Dict[str, float], list]:
        """frames (B, 3, 1, H, W); labels long (B, 3, H, W); selector (B, K); labelled bool (B, 3);
        gap long (B,) -> (loss, {part: value, "top_p": p}, [logits1, logits2] (B, K+1, H, W))."""
        cfg = self.cfg
        need_aux = cfg.contrastive > 0 or cfg.temporal > 0 or cfg.consistency > 0
        with autocast if autocast is not None else contextlib.nullcontext():
            res = forward_triplet(self.net, frames, labels, selector, cfg.window, aux=need_aux,
                                  last_value=cfg.temporal > 0)
        logits, aux = res if need_aux else (res, None)
        parts: Dict[str, float] = {}
        loss = 0.0
        p = 1.0
        targets = list(_labelled_targets(logits, labels, selector, labelled))
        if cfg.ce > 0:
            ce = 0.0
            for lg, target, _ in targets:
                li, p = self.ce_loss(lg.float(), target, step)
                ce = ce + li
            if torch.is_tensor(ce):
                loss = ce if cfg.ce == 1.0 else cfg.ce * ce
                parts["ce"] = float(ce.detach())
        if cfg.jaccard > 0:
            jac = 0.0
            for lg, target, objects in targets:
                jac = jac + soft_jaccard_loss(lg, target, objects)
            if torch.is_tensor(jac):
                loss = loss + cfg.jaccard * jac
                parts["jaccard"] = float(jac.detach())
        if cfg.contrastive > 0:
            c = self.contrastive(aux.keys, labels, labelled, selector.shape[1] + 1)
            loss = loss + cfg.contrastive * c
            parts["contrastive"] = float(c.detach())
        if cfg.temporal > 0:
            tc = temporal_contrastive_loss(aux.values, selector, cfg.temporal_eps)
            loss = loss + cfg.temporal * tc
            parts["temporal"] = float(tc.detach())
        if cfg.consistency > 0:
            use = ((gap <= cfg.consistency_max_gap) & ~(labelled[:, 1] & labelled[:, 2])).float()
            cons = neighbour_consistency_loss(aux.probs[0], aux.probs[1], use, cfg.consistency_pool)
            loss = loss + cfg.consistency * cons
            parts["consistency"] = float(cons.detach())
        if not torch.is_tensor(loss):  # no term this step (e.g. no labelled target and no aux loss)
            loss = sum(lg.sum() for lg in logits) * 0.0
        parts["top_p"] = p
        return loss, parts, logits
