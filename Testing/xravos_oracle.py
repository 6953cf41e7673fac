"""A literal, slow re-statement of the released XRAVOS inference (inference_core_mosxav.py), as a test oracle.

Written for this project from the public code's semantics: keys AND values of every
memory frame are unfolded into k x k windows (zero padding), window slots outside the
map get -1 added to their logit, every object has its own memory bank and recomputes
the affinity, softmax over the top-k of all T*k^2 candidates, the plain decoder on
cat(readout, f16_thin) per object, STM aggregation, a frame becomes memory when it is
>= mem_every frames after the last memory frame, the last frame never does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _unfold(x: torch.Tensor, k: int, pad_value: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, k*k, H*W): the k x k window around every position."""
    b, c, h, w = x.shape
    r = k // 2
    x = F.pad(x, (r, r, r, r), value=pad_value)
    x = x.unfold(2, k, 1).unfold(3, k, 1).reshape(b, c, h, w, k * k)
    return x.permute(0, 1, 4, 2, 3).reshape(b, c, k * k, h * w)


def _aggregate(prob):
    new_prob = torch.cat([torch.prod(1 - prob, dim=0, keepdim=True), prob], 0).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(new_prob / (1 - new_prob)), dim=0)


def reference_probs(model, frames_u8: np.ndarray, labels0: np.ndarray, window: int, mem_every: int,
                    top_k: int = 20) -> np.ndarray:
    """Probabilities (K+1, T, H, W) of a forward pass from a support at frame 0 (H, W multiples of 16)."""
    t_total, h, w = frames_u8.shape
    k_obj = int(labels0.max())
    imgs = torch.from_numpy(frames_u8).float().div(255).sub(0.5).div(0.5)[:, None].expand(-1, 3, -1, -1)
    h16, w16 = h // 16, w // 16
    mask_bias = _unfold(torch.ones(1, 1, h16, w16), window, pad_value=-1.0)
    mask_bias = torch.where(mask_bias >= 0, torch.zeros_like(mask_bias), mask_bias)  # 0 inside, -1 outside

    prob = torch.zeros(k_obj + 1, t_total, 1, h, w)
    prob[0] = 1e-7
    onehot = torch.from_numpy(np.stack([labels0 == i for i in range(1, k_obj + 1)])).float()[:, None]
    prob[:, 0] = _aggregate(onehot)

    banks = [{"k": [], "v": [], "m": []} for _ in range(k_obj)]

    def add(frame, kf16, f16, masks):
        v16 = model.encode_value(imgs[frame:frame + 1], f16, masks)  # (K, C_v, h, w)
        kk = _unfold(kf16, window)  # (1, C_k, k^2, N)
        for o in range(k_obj):
            banks[o]["k"].append(kk)
            banks[o]["v"].append(_unfold(v16[o:o + 1], window))
            banks[o]["m"].append(mask_bias)

    with torch.no_grad():
        k16, _, f16, _, _ = model.encode_key(imgs[0:1])
        add(0, k16, f16, prob[1:, 0])
        last = 0
        for ti in range(1, t_total):
            is_mem = ti - last >= mem_every
            k16, thin, f16, f8, f4 = model.encode_key(imgs[ti:ti + 1])
            q = k16.flatten(2).unsqueeze(2)  # (1, C_k, 1, M)
            outs = []
            for o in range(k_obj):
                mk = torch.cat(banks[o]["k"], 2)
                mv = torch.cat(banks[o]["v"], 2)
                mm = torch.cat(banks[o]["m"], 2)
                a_sq = mk.pow(2).sum(1, keepdim=True)
                ab = (q * mk).sum(1, keepdim=True)
                aff = (2 * ab - a_sq) / math.sqrt(mk.shape[1]) + mm  # (1, 1, T*k^2, M)
                vals, idx = torch.topk(aff, k=top_k, dim=2)
                ex = vals.exp()
                ex = ex / ex.sum(2, keepdim=True)
                aff = torch.zeros_like(aff).scatter_(2, idx, ex)
                mem = (aff * mv).sum(2).view(1, -1, h16, w16)
                outs.append(torch.sigmoid(model.decoder(torch.cat([mem, thin], 1), f8, f4)))
            out = _aggregate(torch.cat(outs, 0))
            prob[:, ti] = out
            if ti != t_total - 1 and is_mem:
                add(ti, k16, f16, out[1:])
                last = ti
    return prob[:, :, 0].numpy()
