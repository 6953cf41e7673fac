"""The mathematics of the training losses on small tensors: hand-computed values, gradient
directions, invariances (fsvos.train.losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsvos.train.losses import (BootstrappedCE, ObjectContrastiveLoss, labels_to_feature_grid,
                                neighbour_consistency_loss, sample_anchor_sets, soft_jaccard_loss,
                                spatio_temporal_contrastive, temporal_contrastive_loss)


# ---------------------------------------------------------------- bootstrapped CE

def test_bootstrapped_ce_plain_then_hardest_pixels():
    # 1 x 2 classes x 1 x 4 pixels; target class 0 everywhere: per-pixel CE = log(1 + e^(l1 - l0))
    logits = torch.tensor([[[[0.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 2.0, -1.0]]]])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    per_px = [math.log(1 + math.exp(d)) for d in (0.0, 1.0, 2.0, -1.0)]
    ce = BootstrappedCE(start_warm=10, end_warm=20, top_p=0.5)
    loss, p = ce(logits, target, step=5)  # warm-up: plain mean
    assert p == 1.0 and loss.item() == pytest.approx(sum(per_px) / 4, rel=1e-6)
    loss, p = ce(logits, target, step=30)  # after warm-up: mean of the hardest 50 % = 2 pixels
    assert p == 0.5 and loss.item() == pytest.approx((per_px[1] + per_px[2]) / 2, rel=1e-6)
    loss, p = ce(logits, target, step=15)  # half-way: p = 0.5 + 0.5 * 0.5 = 0.75 -> 3 pixels
    assert p == pytest.approx(0.75) and loss.item() == pytest.approx((per_px[0] + per_px[1] + per_px[2]) / 3)


# ---------------------------------------------------------------- Eq. 12-13

def test_contrastive_distance_matches_eq13_by_hand():
    za = torch.tensor([[1.0, 0.0]])
    zk = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    ok = torch.tensor([1, 1, 2])
    tau = 0.5
    loss = spatio_temporal_contrastive(za, torch.tensor([1]), zk, ok, tau)
    # two positives (dot 1.0, 0.6), one negative (dot 0.0); Eq. 12 averages over the positives
    neg = math.exp(0.0 / tau)
    c1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + neg))
    c2 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + neg))
    assert loss.item() == pytest.approx((c1 + c2) / 2, rel=1e-6)
    # a second anchor of object 2 (one positive, two negatives); Eq. 12 averages over anchors
    za2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss2 = spatio_temporal_contrastive(za2, torch.tensor([1, 2]), zk, ok, tau)
    c3 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0.0) + math.exp(0.8 / tau)))
    assert loss2.item() == pytest.approx(((c1 + c2) / 2 + c3) / 2, rel=1e-6)


def test_contrastive_gradient_pulls_the_anchor_to_its_object_and_is_order_invariant():
    torch.manual_seed(0)
    za = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    oa = torch.tensor([1, 1, 2, 2])
    zk = F.normalize(torch.randn(6, 8), dim=1)
    ok = torch.tensor([1, 1, 1, 2, 2, 2])
    loss = spatio_temporal_contrastive(za, oa, zk, ok, 0.1)
    loss.backward()
    centre = torch.stack([zk[ok == 1].mean(0), zk[ok == 2].mean(0)])
    for i in range(4):  # descent (-grad) moves toward the own object's keys, away from the other's
        own, other = centre[oa[i] - 1], centre[2 - oa[i]]
        assert float(-za.grad[i] @ (own - other)) > 0
    perm = torch.randperm(6)
    again = spatio_temporal_contrastive(za.detach(), oa, zk[perm], ok[perm], 0.1)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)
    # perfectly separated features: the loss falls toward 0 as tau falls
    sep_a, sep_k = torch.eye(2)[[0, 1]], torch.eye(2)[[0, 1]]
    vals = [spatio_temporal_contrastive(sep_a, torch.tensor([1, 2]), sep_k, torch.tensor([1, 2]), t).item()
            for t in (1.0, 0.1)]
    assert vals[1] < vals[0] and vals[1] < 1e-4


# ---------------------------------------------------------------- Eq. 11

def test_anchor_sampling_is_balanced_and_uses_shared_objects_only():
    obj_anchor = torch.tensor([0] * 20 + [1] * 5 + [2] * 9 + [3] * 4 + [-1] * 3)
    obj_key = torch.tensor([0] * 30 + [1] * 7 + [2] * 3)  # object 3 is not in the keyframes
    g = torch.Generator().manual_seed(0)
    ia, ik, obj = sample_anchor_sets(obj_anchor, obj_key, g)
    n = 3  # fewest features: object 2 has 3 in the keyframes
    assert obj.tolist() == [0] * n + [1] * n + [2] * n
    assert torch.equal(obj_anchor[ia], obj) and torch.equal(obj_key[ik], obj)
    assert len(set(ia.tolist())) == len(ia) and len(set(ik.tolist())) == len(ik)  # without replacement
    ia, ik, obj = sample_anchor_sets(obj_anchor, obj_key, g, max_per_object=2)
    assert len(obj) == 6
    assert sample_anchor_sets(torch.tensor([1, 1, -1]), torch.tensor([1, 0]), g) is None  # one shared object


def test_labels_on_the_feature_grid():
    lab = torch.zeros(1, 4, 4, dtype=torch.long)
    lab[0, 0:2, 0:2] = 1  # cell (0,0): all object 1
    lab[0, 0, 2] = 2  # cell (0,1): 1/4 object 2
    lab[0, 2, 0] = 1  # cell (1,0): 1/4 object 1, but ...
    lab[0, 3, 0:2] = 2  # ... 2/4 object 2
    grid = labels_to_feature_grid(lab, 3, (2, 2), min_fraction=0.3)
    assert grid.tolist() == [[[1, -1], [2, 0]]]  # cell (0,1): below 0.3 -> ignored; (1,1) pure background


def test_object_contrastive_loss_on_key_maps():
    torch.manual_seed(0)
    labels = torch.zeros(1, 3, 32, 32, dtype=torch.long)
    labels[:, :, :, 16:] = 1  # object 1: right half of every frame
    loss_fn = ObjectContrastiveLoss(key_dim=4, dim=4, tau=0.1)
    loss_fn.head = torch.nn.Identity()  # look at Eq. 11-13 on the keys themselves
    clustered = torch.zeros(1, 3, 4, 2, 2)
    clustered[..., 0, :, 0] = 1  # left cells -> e0
    clustered[..., 1, :, 1] = 1  # right cells -> e1
    keys = (clustered + 0.3 * torch.randn_like(clustered)).requires_grad_()
    labelled = torch.ones(1, 3, dtype=torch.bool)
    good = loss_fn(keys, labels, labelled, 2)
    bad = loss_fn(torch.randn_like(clustered), labels, labelled, 2)
    assert good.item() < bad.item()
    good.backward()
    assert keys.grad.abs().sum() > 0
    # frames without labels take no part: only frame 0 labelled -> no anchor frame -> 0, still differentiable
    none = loss_fn(keys, labels, torch.tensor([[True, False, False]]), 2)
    assert none.item() == 0.0 and none.requires_grad


# ---------------------------------------------------------------- TCMN Eq. 1

def test_temporal_contrastive_loss_by_hand_and_scale_invariance():
    v0, v1, v2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    vals = [v.reshape(1, 1, 2, 1) for v in (v0, v1, v2)]
    sel = torch.ones(1, 1)
    eps = 0.01
    expected = (2 * (1 - 1 / math.sqrt(2))) / (1 - 0.0 + eps)
    assert temporal_contrastive_loss(vals, sel, eps).item() == pytest.approx(expected, rel=1e-6)
    scaled = [v * s for v, s in zip(vals, (3.0, 0.5, 7.0))]
    assert temporal_contrastive_loss(scaled, sel, eps).item() == pytest.approx(expected, rel=1e-5)
    # four frames: the sum of Eq. 1 has two terms
    v3 = torch.tensor([-1.0, 1.0]).reshape(1, 1, 2, 1)
    s = lambda a, b: F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()  # noqa: E731
    t2 = ((1 - s(vals[1], vals[2])) + (1 - s(vals[2], v3))) / (1 - s(vals[1], v3) + eps)
    assert temporal_contrastive_loss(vals + [v3], sel, eps).item() == pytest.approx(expected + t2, rel=1e-5)
    with pytest.raises(ValueError):
        temporal_contrastive_loss(vals[:2], sel)


def test_temporal_contrastive_gradient_and_selector():
    torch.manual_seed(1)
    vals = [torch.randn(2, 2, 3, 4, requires_grad=True) for _ in range(3)]
    sel = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = temporal_contrastive_loss(vals, sel)
    loss.backward()
    assert vals[1].grad[0, 1].abs().sum() == 0  # unselected object: no gradient
    # a small step against the gradient lowers the loss (adjacent values closer, ends apart)
    with torch.no_grad():
        stepped = [v - 1e-2 * v.grad for v in vals]
    assert temporal_contrastive_loss(stepped, sel).item() < loss.item()
    # the ends drifting apart lowers the loss (denominator grows), the middle near both ends too
    a, b = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1), torch.tensor([0.0, 1.0]).reshape(1, 1, 2, 1)
    mid = (a + b) / 2
    near = temporal_contrastive_loss([a, mid, a * 0.9 + b * 0.1], torch.ones(1, 1)).item()
    far = temporal_contrastive_loss([a, mid, b], torch.ones(1, 1)).item()
    assert far < near


# ---------------------------------------------------------------- neighbour consistency

def _square(shift: int) -> torch.Tensor:
    p = torch.zeros(1, 2, 16, 16)
    p[:, 1, 4:12, 4 + shift:12 + shift] = 1
    p[:, 0] = 1 - p[:, 1]
    return p


def test_consistency_loss_values_weights_and_motion_tolerance():
    a = torch.zeros(2, 2, 8, 8)
    a[:, 0] = 1
    b = torch.zeros(2, 2, 8, 8)
    b[:, 1] = 1
    assert neighbour_consistency_loss(a, a, torch.ones(2), pool=1).item() == 0
    assert neighbour_consistency_loss(a, b, torch.ones(2), pool=1).item() == pytest.approx(2.0)  # 1^2 + 1^2
    half = b.clone()
    half[1] = a[1]  # sample 1 agrees
    assert neighbour_consistency_loss(a, half, torch.tensor([1.0, 1.0]), pool=1).item() == pytest.approx(1.0)
    assert neighbour_consistency_loss(a, half, torch.tensor([0.0, 1.0]), pool=1).item() == 0  # sample 0 not used
    assert neighbour_consistency_loss(a, b, torch.zeros(2), pool=1).item() == 0
    moved = neighbour_consistency_loss(_square(0), _square(1), torch.ones(1), pool=1).item()
    pooled = neighbour_consistency_loss(_square(0), _square(1), torch.ones(1), pool=4).item()
    assert 0 < pooled < moved  # a 1-pixel move costs less through 4x4 cells


def test_consistency_gradient_pulls_the_predictions_together():
    la = torch.randn(1, 3, 8, 8, requires_grad=True)
    lb = torch.randn(1, 3, 8, 8)
    pa, pb = la.softmax(1), lb.softmax(1)
    loss = neighbour_consistency_loss(pa, pb, torch.ones(1), pool=2)
    loss.backward()
    with torch.no_grad():
        after = neighbour_consistency_loss((la - 0.5 * la.grad).softmax(1), pb, torch.ones(1), pool=2)
    assert after.item() < loss.item()


# ---------------------------------------------------------------- soft Jaccard


def _certain(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Aggregated logits (B, k+1, H, W) that predict ``labels`` with probability ~1."""
    return F.one_hot(labels, k + 1).permute(0, 3, 1, 2).float() * 40 - 20


def test_soft_jaccard_by_hand():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 1  # object 1: 4 pixels; object 2 absent
    both = torch.ones(1, 2)
    assert soft_jaccard_loss(_certain(labels, 2), labels, both).item() == pytest.approx(0.0, abs=1e-6)
    shifted = torch.zeros_like(labels)
    shifted[0, :2, 1:3] = 1  # 2 of 4 pixels right: IoU (2 + 1) / (6 + 1) for object 1, 1 for object 2
    got = soft_jaccard_loss(_certain(shifted, 2), labels, both).item()
    assert got == pytest.approx(((1 - 3 / 7) + 0) / 2, abs=1e-6)
    ghost = labels.clone()
    ghost[0, 3, 3] = 2  # one pixel of the absent object 2 predicted: its IoU 1 / (1 + 1)
    assert soft_jaccard_loss(_certain(ghost, 2), labels, both).item() == pytest.approx(0.25, abs=1e-6)
    only_first = torch.tensor([[1.0, 0.0]])  # object 2 not in this sample: not counted
    assert soft_jaccard_loss(_certain(ghost, 2), labels, only_first).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_jaccard_loss(_certain(ghost, 2), labels, torch.zeros(1, 2)).item() == 0.0


def test_soft_jaccard_weighs_a_thin_object_as_much_as_a_large_one():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 2:22, 2:22] = 1  # 400 pixels
    labels[0, 28, 4:28] = 2  # a 1-px wire of 24 pixels
    missed_wire, missed_blob = _certain(labels, 2), _certain(labels, 2)
    missed_wire[0, 2, 28, 4:28], missed_wire[0, 0, 28, 4:28] = -20, 20
    missed_blob[0, 1, 2:22, 2:22], missed_blob[0, 0, 2:22, 2:22] = -20, 20
    sel = torch.ones(1, 2)
    # missing either object costs nearly the same (1 - 1/25 against 1 - 1/401) ...
    assert soft_jaccard_loss(missed_wire, labels, sel).item() == pytest.approx(soft_jaccard_loss(missed_blob, labels, sel).item(), abs=0.03)
    # ... where cross-entropy charges the wire 17 times less
    ce_wire, ce_blob = F.cross_entropy(missed_wire, labels).item(), F.cross_entropy(missed_blob, labels).item()
    assert ce_blob / ce_wire == pytest.approx(400 / 24, rel=1e-3)


def test_soft_jaccard_gradient_raises_the_object_on_its_pixels_and_lowers_it_elsewhere():
    torch.manual_seed(0)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 1
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    soft_jaccard_loss(logits, labels, torch.ones(2, 1)).backward()
    g = logits.grad[:, 1] - logits.grad[:, 0]  # descent raises the object's logit where g < 0
    inside = labels == 1
    assert (g[inside] < 0).all() and (g[~inside] > 0).all()
