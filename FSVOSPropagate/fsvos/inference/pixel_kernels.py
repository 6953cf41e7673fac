"""Per-pixel steps of every propagated frame in one compiled pass each (numba), for the CPU.

After the decoder, each frame's object probabilities go through STM's soft aggregation, then the
label map (argmax over background + K objects) and the per-object confidence (soft IoU of the
probabilities with the labels).  In torch these are 10-15 elementwise passes over (K+1) full
frames: 4.1 ms of a 42 ms frame for the compact model at 512 x 512 with 3 objects on this
project's 2-core machine.  Here each is one pass over the pixels (together 0.6 ms).

The arithmetic is the torch path's, in the same float32 operations and order (aggregation:
bitwise equal; the confidence's sums accumulate in float64 instead of torch's float32 pairwise
sums, a difference of about 1e-7).  The torch path stays for devices other than the CPU and for
environments without numba (``FSVOS_FUSED_SELECT=0`` turns both compiled paths off).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from .window_select import available, numba

if numba is not None:
    _jit = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    # no NaN/inf/signed-zero cases (probabilities in [0, 1]): lets the clamps vectorise; no
    # reassociation, contraction or approximate reciprocals, so the arithmetic stays torch's
    @numba.njit(fastmath={"nnan", "ninf", "nsz"}, **_jit)
    def _odds(p, out, lo, hi):
        """out = q / (1 - q), q = p clamped to [lo, hi] (1-D, vectorised)."""
        one = np.float32(1.0)
        for j in range(p.shape[0]):
            q = min(max(p[j], lo), hi)
            out[j] = q / (one - q)

    @numba.njit(fastmath={"nnan", "ninf", "nsz"}, **_jit)
    def _aggregate(prob, out):
        """prob (K, P) float32 -> out (K+1, P): STM soft aggregation, background first.

        Each step is a loop over a chunk of pixels that stays in L1 (vectorised); the operations
        and their order are torch's."""
        k, n = prob.shape
        lo = np.float32(1e-7)  # the clamp bounds as torch rounds its Python scalars
        hi = np.float32(1.0 - 1e-7)
        one = np.float32(1.0)
        chunk = 2048
        bg = np.empty(chunk, np.float32)
        total = np.empty(chunk, np.float32)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            m = c1 - c0
            p0 = prob[0, c0:c1]
            for j in range(m):
                bg[j] = one - p0[j]
            for i in range(1, k):
                pi = prob[i, c0:c1]
                for j in range(m):
                    bg[j] = bg[j] * (one - pi[j])
            _odds(bg[:m], out[0, c0:c1], lo, hi)
            total[:m] = out[0, c0:c1]
            for i in range(k):
                oi = out[i + 1, c0:c1]
                _odds(prob[i, c0:c1], oi, lo, hi)
                for j in range(m):
                    total[j] = total[j] + oi[j]
            for j in range(m):
                total[j] = one / total[j]
            for i in range(k + 1):
                oi = out[i, c0:c1]
                for j in range(m):
                    oi[j] = oi[j] * total[j]

    @numba.njit(fastmath=True, **_jit)
    def _sum(x):
        """sum of a 1-D float32 array in float64, in any order (vectorised)."""
        total = 0.0
        for j in range(x.shape[0]):
            total += x[j]
        return total

    @numba.njit(fastmath=True, **_jit)
    def _masked_sum(x, lab, c):
        """sum of x where lab == c, in float64, in any order (vectorised)."""
        total = 0.0
        for j in range(x.shape[0]):
            total += x[j] if lab[j] == c else np.float32(0.0)
        return total

    @numba.njit(**_jit)
    def _count(lab, c):
        total = 0
        for j in range(lab.shape[0]):
            total += lab[j] == c
        return total

    @numba.njit(fastmath={"nnan", "ninf", "nsz"}, **_jit)
    def _labels_and_stats(prob, labels, inter, count, total):
        """prob (K+1, P) float32 -> labels (P,) uint8 = first argmax over dim 0; per class c:
        inter[c] = sum of the maximum over pixels labelled c, count[c] = pixels labelled c;
        total[c] = sum of prob[c] over all pixels (float64 sums)."""
        k1, n = prob.shape
        chunk = 2048
        best = np.empty(chunk, np.float32)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            m = c1 - c0
            lab = labels[c0:c1]
            best[:m] = prob[0, c0:c1]
            lab[:] = 0
            total[0] += _sum(prob[0, c0:c1])
            for i in range(1, k1):
                pi = prob[i, c0:c1]
                total[i] += _sum(pi)
                li = np.uint8(i)
                for j in range(m):  # the first maximum on ties, as torch.argmax
                    v = pi[j]
                    better = v > best[j]
                    lab[j] = li if better else lab[j]
                    best[j] = v if better else best[j]
            for c in range(k1):  # one vectorised pass per class instead of a scatter
                inter[c] += _masked_sum(best[:m], lab, np.uint8(c))
                count[c] += _count(lab, np.uint8(c))


def usable(x: torch.Tensor) -> bool:
    """Whether the compiled pass can take this tensor (CPU float32, numba available)."""
    return available() and x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad


def aggregate(prob: torch.Tensor) -> torch.Tensor:
    """STM soft aggregation of (K, ...) float32 CPU probabilities -> (K+1, ...) (see
    :func:`fsvos.inference.preprocess.aggregate`, which calls this when :func:`usable`)."""
    p = prob.contiguous()
    out = torch.empty((p.shape[0] + 1,) + tuple(p.shape[1:]), dtype=torch.float32)
    _aggregate(p.numpy().reshape(p.shape[0], -1), out.numpy().reshape(out.shape[0], -1))
    return out


def labels_and_confidence(prob: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) uint8 (first argmax over background + K objects) and the per-object soft
    IoU (K,) float32 of a (K+1, H, W) float32 CPU probability map, as
    :func:`~fsvos.inference.propagator.confidence_of` defines it."""
    p = prob.contiguous().numpy()
    k1 = p.shape[0]
    labels = np.empty(p.shape[1:], np.uint8)
    inter = np.zeros(k1, np.float64)
    count = np.zeros(k1, np.int64)
    total = np.zeros(k1, np.float64)
    _labels_and_stats(p.reshape(k1, -1), labels.reshape(-1), inter, count, total)
    return labels, soft_iou(inter[1:], count[1:], total[1:])


def soft_iou(inter: np.ndarray, count: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Per-object confidence (K,) float32 from, per object, the probability summed where it is the
    label (``inter``), the pixels it labels (``count``) and its probability summed everywhere
    (``total``): sum(min(p, m)) / sum(max(p, m)) with m the label mask; an object with less than
    one pixel's worth of union is confidently absent (1)."""
    inter, count, total = (np.asarray(a, np.float64) for a in (inter, count, total))
    union = total - inter + count
    return np.where(union < 1.0, 1.0, inter / np.maximum(union, 1e-12)).astype(np.float32)


def warm_up() -> bool:
    """Compile (or load from numba's cache) every compiled kernel of the engine on tiny inputs
    with the argument types propagation uses, in the variant this process runs (parallel or one
    thread, :func:`fsvos.numba_threads.threads`), so that the first propagation does not pay for
    it.  True if numba is available."""
    if not available():
        return False
    from ..model import decoder_kernels, pool_kernels, winograd_kernels
    from .matching import WindowGrid, int8_available, local_affinity
    from .memory import MemoryBank

    winograd_kernels.warm_up()
    decoder_kernels.warm_up()
    pool_kernels.warm_up()

    g = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 8, 16, generator=g)
    query = torch.randn(8, 16, generator=g)
    grid = WindowGrid(4, 4, 3, torch.device("cpu"))
    for bf16 in (False, True):  # the variant this process runs (parallel or one thread)
        local_affinity(keys, keys.pow(2).sum(1), query, grid, "similarity", 4, select_bf16=bf16, compiled=True)
    if int8_available():  # selection on int8 keys (the bf16 mode)
        bank = MemoryBank(int8_keys=True)
        for t in range(keys.shape[0]):
            bank.add(t, keys[t], torch.zeros(1, 1, 4, 4))
        # the fused selection where it runs (window 3), the integer GEMMs + selection (window 17)
        for g_int8 in (grid, WindowGrid(4, 4, 17, torch.device("cpu"))):
            local_affinity(bank.keys, bank.key_sq, query, g_int8, "similarity", 4, select_bf16=True, compiled=True,
                           int8_keys=bank.int8_keys)
    labels_and_confidence(aggregate(torch.rand(2, 1, 4, 4, generator=g))[:, 0])
    return True
