"""Training losses.

* :class:`BootstrappedCE` - STCN's bootstrapped cross-entropy on the aggregated logits.
* :class:`ObjectContrastiveLoss` - the paper's object-aware spatio-temporal contrastive
  loss (seed 000, section 3.3, Eq. 11-13) on projected keys.
* :func:`temporal_contrastive_loss` - TCMN's temporal contrastive loss on memory values
  (seed 001, Eq. 1).
* :func:`neighbour_consistency_loss` - agreement of the predictions of neighbouring
  frames, for frames without labels (the spatiotemporal consistency idea of seed 004).
* :func:`soft_jaccard_loss` - one minus the soft IoU of each object, which the J of the
  evaluation measures and cross-entropy does not: a 1-2 px wire is a few pixels of a frame.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

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


# ---------------------------------------------------------------- object-aware contrastive loss

class ProjectionHead(torch.nn.Module):
    """f_proj of section 3.3: a light CNN (3x3 conv, ReLU, 1x1 conv) from keys to the contrastive space.

    (B, C_k, h, w) -> (B, dim, h, w).  Training only: never part of the saved network.
    """

    def __init__(self, in_dim: int, dim: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(in_dim, in_dim, 3, padding=1), torch.nn.ReLU(inplace=True),
                                       torch.nn.Conv2d(in_dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def labels_to_feature_grid(labels: torch.Tensor, n_classes: int, size: Tuple[int, int],
                           min_fraction: float = 0.25) -> torch.Tensor:
    """Object labels M^k' at the feature resolution (section 3.3: "labels downsampled to the feature space").

    labels long (B, H, W) 0..n_classes-1 -> long (B, h, w): the object covering the largest
    share of a feature cell when that share is >= ``min_fraction``, 0 (background) for cells
    with no object pixel at all, -1 (ignored) for cells with a little of an object.
    """
    one_hot = F.one_hot(labels, n_classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    frac = F.adaptive_avg_pool2d(one_hot, size)  # (B, C, h, w) area fractions
    fg_share, fg_best = frac[:, 1:].max(1)  # (B, h, w)
    out = torch.full(fg_best.shape, -1, dtype=torch.long, device=labels.device)
    out[frac[:, 1:].sum(1) <= 1e-6] = 0
    out[fg_share >= min_fraction] = fg_best[fg_share >= min_fraction] + 1
    return out


def sample_anchor_sets(obj_anchor: torch.Tensor, obj_key: torch.Tensor, generator: Optional[torch.Generator] = None,
                       max_per_object: int = 0) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Anchor-based balanced sampling, Eq. 11.

    obj_anchor long (Na,): object of each anchor-frame feature (-1 = ignored); obj_key long
    (Nk,): object of each keyframe feature.  The objects k' used are those present in both;
    for each, the same number n of anchor features and of keyframe features is drawn without
    replacement, n = the fewest features any of these objects has (in the anchor frame or in
    the keyframes), capped at ``max_per_object`` when > 0.

    Returns (anchor indices (K'*n,), key indices (K'*n,), object of each drawn pair (K'*n,)),
    or None when fewer than 2 objects are shared (no negatives: Eq. 13 is undefined).
    """
    objs = [int(o) for o in torch.unique(obj_anchor) if o >= 0 and bool((obj_key == o).any())]
    if len(objs) < 2:
        return None
    pos_a = [torch.nonzero(obj_anchor == o).flatten() for o in objs]
    pos_k = [torch.nonzero(obj_key == o).flatten() for o in objs]
    n = min(min(len(p) for p in pos_a), min(len(p) for p in pos_k))
    if max_per_object > 0:
        n = min(n, max_per_object)
    dev = obj_anchor.device

    def draw(p):
        return p[torch.randperm(len(p), generator=generator).to(dev)[:n]]

    ia = torch.cat([draw(p) for p in pos_a])
    ik = torch.cat([draw(p) for p in pos_k])
    obj = torch.tensor(objs, device=dev).repeat_interleave(n)
    return ia, ik, obj


def spatio_temporal_contrastive(z_anchor: torch.Tensor, obj_anchor: torch.Tensor, z_key: torch.Tensor,
                                obj_key: torch.Tensor, tau: float) -> torch.Tensor:
    """The cross-frame loss C of Eq. 12 with the contrastive distance of Eq. 13.

    z_anchor (Na, C) anchor features z_i (the set Gamma of Eq. 11) with objects obj_anchor (Na,);
    z_key (Nk, C) keyframe features with objects obj_key (Nk,).  For anchor i the positives P_i
    are the keyframe features of its object, the negatives N_i those of the other objects:

        C(z_i, z_j+) = -log( exp(z_i.z_j+ / tau) / (exp(z_i.z_j+ / tau) + sum_{j- in N_i} exp(z_i.z_j- / tau)) )
        C = 1/|Gamma| sum_i 1/|P_i| sum_{j+ in P_i} C(z_i, z_j+)

    Anchors without a positive are skipped.  Features are used as given (normalise them first).
    """
    logits = z_anchor @ z_key.t() / tau  # (Na, Nk)
    same = obj_anchor[:, None] == obj_key[None, :]  # (Na, Nk)
    neg_lse = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1, keepdim=True)  # (Na, 1)
    per_pair = torch.logaddexp(logits, neg_lse) - logits  # -log(e^l / (e^l + sum_neg e^l-))
    n_pos = same.sum(1)
    has_pos = n_pos > 0
    per_anchor = (per_pair * same).sum(1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


class ObjectContrastiveLoss(torch.nn.Module):
    """Object-aware spatio-temporal contrastive loss (paper section 3.3, Eq. 11-13).

    The keys of the anchor (query) frame and of its keyframes (the earlier frames of the
    triplet, i.e. the memory) go through the projection head f_proj and are L2-normalised;
    labels are brought to the feature grid (:func:`labels_to_feature_grid`, background is an
    object too); Eq. 11 draws balanced anchor/keyframe sets and Eq. 12-13 give the loss.  One
    term per (sample, query frame 1..T-1) with at least two shared objects; their mean.
    """

    def __init__(self, key_dim: int, dim: int = 128, tau: float = 0.1, min_fraction: float = 0.25,
                 max_per_object: int = 0):
        super().__init__()
        self.head = ProjectionHead(key_dim, dim)
        self.tau, self.min_fraction, self.max_per_object = tau, min_fraction, max_per_object

    def forward(self, keys: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor, n_classes: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """keys (B, T, C_k, h, w) float; labels long (B, T, H, W); labelled bool (B, T) -> scalar."""
        b, t, ck, h, w = keys.shape
        z = F.normalize(self.head(keys.reshape(b * t, ck, h, w).float()), dim=1)  # (B*T, D, h, w)
        z = z.reshape(b, t, -1, h * w).transpose(2, 3)  # (B, T, h*w, D)
        grid = labels_to_feature_grid(labels.reshape(b * t, *labels.shape[2:]), n_classes, (h, w),
                                      self.min_fraction).reshape(b, t, h * w)  # (B, T, h*w)
        terms: List[torch.Tensor] = []
        for i in range(b):
            for q in range(1, t):
                mem = [m for m in range(q) if bool(labelled[i, m])]
                if not bool(labelled[i, q]) or not mem:
                    continue
                key_obj = grid[i, mem].reshape(-1)  # (|mem|*h*w,)
                drawn = sample_anchor_sets(grid[i, q], key_obj, generator, self.max_per_object)
                if drawn is None:
                    continue
                ia, ik, obj = drawn
                z_key = z[i, mem].reshape(-1, z.shape[-1])
                terms.append(spatio_temporal_contrastive(z[i, q, ia], obj, z_key[ik], obj, self.tau))
        if not terms:  # keep the head in the graph (DDP expects a gradient for every parameter)
            return z.sum() * 0.0
        return torch.stack(terms).mean()


# ---------------------------------------------------------------- TCMN temporal contrastive loss

def temporal_contrastive_loss(values: Sequence[torch.Tensor], selector: torch.Tensor,
                              eps: float = 0.01) -> torch.Tensor:
    """TCMN (seed 001) Eq. 1 on the memory values of consecutive frames:

        L_tc = sum_{t=1}^{T-2} [(1 - sim(v_{t-1}, v_t)) + (1 - sim(v_t, v_{t+1}))] / (1 - sim(v_{t-1}, v_{t+1}) + eps)

    with sim the cosine similarity of whole value maps.  values: T >= 3 tensors (B, K, C_v, N)
    (one per frame, in temporal order); each object's map is one vector v_t.  The sum over t is
    averaged over the objects in use (selector (B, K) > 0).
    """
    if len(values) < 3:
        raise ValueError("the temporal contrastive loss needs the values of at least 3 frames")
    v = [x.flatten(2).float() for x in values]  # (B, K, C_v*N)

    def sim(a, b):
        return F.cosine_similarity(a, b, dim=-1)  # (B, K)

    total = 0.0
    for t in range(1, len(v) - 1):
        total = total + ((1 - sim(v[t - 1], v[t])) + (1 - sim(v[t], v[t + 1]))) / (1 - sim(v[t - 1], v[t + 1]) + eps)
    sel = selector > 0
    if not bool(sel.any()):
        return total.sum() * 0.0
    return total[sel].mean()


# ---------------------------------------------------------------- consistency of neighbouring frames

def neighbour_consistency_loss(prob_a: torch.Tensor, prob_b: torch.Tensor, weight: torch.Tensor,
                               pool: int = 4) -> torch.Tensor:
    """Mean squared difference of the class probabilities of two neighbouring frames.

    prob_a, prob_b (B, C, H, W) soft masks (softmax of the aggregated logits) of frames a and b
    of the same sample; weight (B,) 1 for the pairs to use (neighbours, not both labelled), else 0.
    Both maps are average-pooled over ``pool`` x ``pool`` pixel cells first, so that the motion
    of an object by less than about a cell between neighbouring frames costs little.  Sum over
    classes, mean over cells, weighted mean over samples; 0 when no pair is used.
    """
    if pool > 1:
        prob_a = F.avg_pool2d(prob_a.float(), pool, ceil_mode=True)
        prob_b = F.avg_pool2d(prob_b.float(), pool, ceil_mode=True)
    per_sample = (prob_a.float() - prob_b.float()).pow(2).sum(1).mean((1, 2))  # (B,)
    w = weight.to(per_sample.dtype)
    if float(w.sum()) <= 0:
        return per_sample.sum() * 0.0
    return (per_sample * w).sum() / w.sum()


# ---------------------------------------------------------------- soft Jaccard (IoU) of each object

def soft_overlap(prob: torch.Tensor, mask: torch.Tensor, dims) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum p m, sum (p + m - p m)) over ``dims``: the soft intersection and union of probability
    maps p with binary masks m (same shape)."""
    return (prob * mask).sum(dims), (prob + mask - prob * mask).sum(dims)


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, selector: torch.Tensor,
                      smooth: float = 1.0) -> torch.Tensor:
    """Mean over the objects of 1 - soft IoU of their probability maps with their masks.

    logits (B, K+1, H, W) aggregated logits (background first); target long (B, H, W) labels
    0..K; selector (B, K), 1 where object k+1 exists in the sample.  Per object: p = softmax
    probability, m = one-hot mask, IoU = (sum p m + smooth) / (sum (p + m - p m) + smooth) over the
    pixels (``smooth`` in pixels keeps an object absent from this frame, m = 0, from dividing by 0:
    its IoU is then 1 only if nothing is predicted).  Weighted mean over the selected objects of
    all samples; 0 when none is selected.  Cross-entropy averages over pixels, so a thin object's
    few pixels weigh little there; here every object weighs the same, as in the J of the
    evaluation (fitting a decoder's logits to a 1-px wire: cross-entropy alone drops the wire,
    J 0; with this term J 0.63, see :mod:`fsvos.bound`).
    """
    k = logits.shape[1] - 1
    prob = logits.float().softmax(1)[:, 1:]  # (B, K, H, W)
    mask = F.one_hot(target, k + 1).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    inter, union = soft_overlap(prob, mask, (2, 3))
    loss = 1 - (inter + smooth) / (union + smooth)  # (B, K)
    w = selector.to(loss.dtype)
    if float(w.sum()) <= 0:
        return loss.sum() * 0.0
    return (loss * w).sum() / w.sum()
