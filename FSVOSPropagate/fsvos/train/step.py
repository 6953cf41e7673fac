"""One training forward pass: 3 frames, the first with its true mask (STCN/XRAVOS).

frame 0 (true mask) -> memory; frame 1 is segmented from it; frame 1 with its
predicted mask joins the memory; frame 2 is segmented from both.  Returns the
aggregated logits (B, K+1, H, W) of frames 1 and 2, and on request what the
auxiliary losses need (:class:`TripletAux`: keys, memory values, probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

from ..model.network import FSVOSNet
from .matching import local_readout


def _aggregate_logits(prob: torch.Tensor) -> torch.Tensor:
    """prob (B, K, H, W) -> logits (B, K+1, H, W) of the STM soft aggregation."""
    new_prob = torch.cat([torch.prod(1 - prob, dim=1, keepdim=True), prob], 1).clamp(1e-7, 1 - 1e-7)
    return torch.log(new_prob / (1 - new_prob))


def _encode_values(model: FSVOSNet, image, f16, masks):
    """image (B, 3, H, W), f16 (B, C, h, w), masks (B, K, H, W) -> values (B, K, C_v, h*w)."""
    b, k = masks.shape[:2]
    others = masks.sum(1, keepdim=True) - masks
    v = model.value_encoder(image.repeat_interleave(k, 0), f16.repeat_interleave(k, 0),
                            masks.reshape(b * k, 1, *masks.shape[2:]),
                            others.reshape(b * k, 1, *masks.shape[2:]))
    return v.reshape(b, k, v.shape[1], -1)


@dataclass
class TripletAux:
    """What the auxiliary losses need from one triplet forward pass.

    keys: (B, 3, C_k, h, w) keys of the 3 frames (h, w = H/16, W/16).
    values: memory values (B, K, C_v, h*w) of frame 0 (true mask), frame 1 (predicted mask)
        and, when asked for, frame 2 (predicted mask).
    probs: soft masks (B, K+1, H, W) (softmax of the aggregated logits) of frames 1 and 2.
    """

    keys: torch.Tensor
    values: List[torch.Tensor]
    probs: List[torch.Tensor]


def forward_triplet(model: FSVOSNet, frames: torch.Tensor, labels: torch.Tensor, selector: torch.Tensor,
                    window: int, aux: bool = False, last_value: bool = False):
    """frames (B, 3, 1, H, W) in [0, 1]; labels (B, 3, H, W); selector (B, K) -> [logits1, logits2].

    With ``aux`` returns ([logits1, logits2], :class:`TripletAux`); ``last_value`` also encodes
    the memory value of frame 2 from its prediction (for the temporal contrastive loss).
    The logits are the same either way.
    """
    b, _, _, h, w = frames.shape
    k = selector.shape[1]
    x = ((frames - 0.5) / 0.5).expand(-1, -1, 3, -1, -1).reshape(b * 3, 3, h, w)
    k16, thin, f16, f8, f4 = model.encode_key(x)
    h16, w16 = k16.shape[-2:]

    def per_frame(t, i):
        return t.reshape(b, 3, *t.shape[1:])[:, i]

    keys = k16.reshape(b, 3, k16.shape[1], h16 * w16).transpose(1, 2)  # (B, C_k, 3, N)
    mask0 = F.one_hot(labels[:, 0], k + 1).permute(0, 3, 1, 2)[:, 1:].float()  # (B, K, H, W)
    values = [_encode_values(model, x.reshape(b, 3, 3, h, w)[:, 0], per_frame(f16, 0), mask0)]
    out = []
    probs: List[torch.Tensor] = []
    for i in (1, 2):
        mem_k = keys[:, :, :i]
        mem_v = torch.stack(values, dim=3)  # (B, K, C_v, T, N)
        readout = local_readout(mem_k, mem_v, keys[:, :, i], h16, w16, window)  # (B, K, C_v, M)
        readout = readout.reshape(b * k, -1, h16, w16)
        dec_in = torch.cat([readout, per_frame(thin, i).repeat_interleave(k, 0)], 1)
        logit = model.decoder(dec_in, per_frame(f8, i).repeat_interleave(k, 0),
                              per_frame(f4, i).repeat_interleave(k, 0), with_features=model.refiner is not None)
        if model.refiner is not None:  # (B*K, 1, H, W) refined at full resolution
            image_feat = model.refiner.image_features(x.reshape(b, 3, 3, h, w)[:, i])  # (B, dim, H, W)
            logit = model.refiner(logit[0], logit[1], image_feat.repeat_interleave(k, 0))
        prob = torch.sigmoid(logit.reshape(b, k, h, w)) * selector[:, :, None, None]
        logits = _aggregate_logits(prob)
        out.append(logits)
        if i == 1:
            masks = F.softmax(logits, dim=1)[:, 1:]
            values.append(_encode_values(model, x.reshape(b, 3, 3, h, w)[:, 1], per_frame(f16, 1), masks))
        if aux:
            probs.append(F.softmax(logits.float(), dim=1))
    if not aux:
        return out
    if last_value:
        masks = F.softmax(out[1], dim=1)[:, 1:]
        values.append(_encode_values(model, x.reshape(b, 3, 3, h, w)[:, 2], per_frame(f16, 2), masks))
    keys5 = k16.reshape(b, 3, k16.shape[1], h16, w16)  # (B, 3, C_k, h, w)
    return out, TripletAux(keys=keys5, values=values, probs=probs)
