"""How well can a decoder that ends at stride S score at best on a labelled cine?

STCN, XRAVOS and this engine predict each object's logits at 1/4 of the frame size and upsample
them bilinearly (``Decoder.forward_shared``).  A 1-2 px guidewire or a small vessel then cannot be
drawn exactly, whatever the network: :func:`bound_labels` fits, for every frame and object, the
logits at 1/S whose bilinear upsampling best matches the true mask (cross-entropy plus soft IoU,
Adam), and aggregates the objects as the engine does.  ``fsvos eval --method bound`` scores these
labels: what a network with that decoder output can reach if everything else were perfect (a
fit, so the exact optimum may lie a little higher), per category.  It reads the true labels of
every scored frame: an analysis of a dataset, not a segmentation method.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .inference.preprocess import aggregate
from .train.losses import soft_overlap

__all__ = ["fit_stride_logits", "bound_labels"]

#: Adam steps per mask (a 1-2 px wire still gains a little beyond: about 1 point of J from 300 to 500)
STEPS = 300
#: cells of background around each object's bounding box in the fit
MARGIN_CELLS = 3


def fit_stride_logits(masks: torch.Tensor, stride: int, steps: int = STEPS, lr: float = 4.0) -> torch.Tensor:
    """Logits at 1/stride whose bilinear upsampling (x stride, ``align_corners=False``, as the
    engine's decoder) best fits binary masks.

    masks: (N, 1, H, W) float32 in {0, 1}, H and W multiples of ``stride``.  Returns (N, 1,
    H / stride, W / stride) float32, fitted by ``steps`` Adam steps from the logits of the
    area-averaged masks (clamped to 5-95%) on the binary cross-entropy plus, per mask, one minus
    the soft IoU of the sigmoid (the cross-entropy alone prefers to drop a 1-px diagonal wire, J 0,
    where the IoU term draws it with J 0.63).
    """
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (N, 1, H, W), got {tuple(masks.shape)}")
    if stride < 1 or masks.shape[-2] % stride or masks.shape[-1] % stride:
        raise ValueError(f"stride {stride} must be >= 1 and divide the mask size {tuple(masks.shape[-2:])}")
    if stride == 1:
        return (masks * 2 - 1) * 10.0  # exact at full resolution
    with torch.enable_grad():
        logits = torch.logit(F.avg_pool2d(masks, stride).clamp(0.05, 0.95)).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=lr)
        for _ in range(steps):
            up = F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
            prob = torch.sigmoid(up)
            inter, union = soft_overlap(prob, masks, (1, 2, 3))
            loss = F.binary_cross_entropy_with_logits(up, masks) + (1 - inter / union.clamp_min(1e-6)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return logits.detach()


def bound_labels(truth: np.ndarray, object_ids: Sequence[int], stride: int = 4, steps: int = STEPS) -> np.ndarray:
    """The labels a stride-``stride`` decoder would give with its best logits for every object.

    truth: (T, H, W) integer labels; object_ids: the labels to draw (others become background).
    Returns (T, H, W) uint8: per frame and object, logits at 1/stride fitted to the mask in its
    bounding box plus MARGIN_CELLS cells of background (:func:`fit_stride_logits`; -20 elsewhere),
    upsampled, passed through the sigmoid and aggregated with the background as the engine does;
    each pixel takes the most probable label.  The fit is an optimisation, so the score of these
    labels is what such a decoder can at least reach.
    """
    truth = np.asarray(truth)
    if truth.ndim != 3:
        raise ValueError(f"truth must be (T, H, W) labels, got shape {truth.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    t, h, w = truth.shape
    ids = [int(i) for i in object_ids]
    out = np.zeros((t, h, w), np.uint8)
    if not ids:
        return out
    gh, gw = -(-h // stride), -(-w // stride)  # the logit grid (frame padded with background)
    lut = np.array([0] + ids, np.uint8)
    for f in range(t):
        logits = torch.full((len(ids), 1, gh, gw), -20.0)
        for k, i in enumerate(ids):
            mask = truth[f] == i
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if not rows.size:
                continue
            r0, r1 = max(rows[0] // stride - MARGIN_CELLS, 0), min(rows[-1] // stride + MARGIN_CELLS + 1, gh)
            c0, c1 = max(cols[0] // stride - MARGIN_CELLS, 0), min(cols[-1] // stride + MARGIN_CELLS + 1, gw)
            crop = np.zeros(((r1 - r0) * stride, (c1 - c0) * stride), np.float32)
            part = mask[r0 * stride:r1 * stride, c0 * stride:c1 * stride]
            crop[:part.shape[0], :part.shape[1]] = part
            logits[k, :, r0:r1, c0:c1] = fit_stride_logits(torch.from_numpy(crop)[None, None], stride, steps)[0]
        up = F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
        prob = torch.sigmoid(up[:, :, :h, :w]).contiguous()  # (K, 1, H, W)
        out[f] = lut[aggregate(prob)[:, 0].argmax(0).numpy()]
    return out
