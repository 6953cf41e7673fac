"""Classical baseline: propagate support labels with dense optical flow.

:func:`propagate_flow` is the anchor that ``fsvos eval --method flow`` reports
next to the network.  It uses OpenCV's DIS optical flow (Kroeger et al. 2016,
``cv2.DISOpticalFlow_create``, preset MEDIUM by default) between consecutive
frames and chains it away from the support frame, forwards and backwards:

* for frame t after the support s, the flow from t to t-1 says where each
  pixel of t was in t-1; composing these steps gives, for every pixel of t,
  its position in s (the coordinate map is resampled with bilinear
  interpolation, which is exact enough because coordinates vary smoothly);
* the support labels are then sampled ONCE at those positions: each object's
  one-hot mask (and the background) is warped with ``cv2.remap`` (bilinear,
  replicated border) and every pixel takes the object with the largest
  warped weight.  Sampling once avoids the blur that re-warping a label map
  at every step accumulates, which would erase thin vessels and wires.

Several support frames: every frame takes its labels from the nearest
support in time (ties go to the earlier support), so the cine is split into
contiguous segments, each propagated from its own support.  Support frames
are returned exactly as given.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import cv2
import numpy as np

from .errors import FsvosInputError

__all__ = ["propagate_flow", "DIS_PRESETS"]

#: name -> OpenCV DIS preset
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _nearest_support(n_frames: int, supports: list) -> np.ndarray:
    """(T,) index into ``supports`` (sorted) of the nearest support per frame; ties -> earlier."""
    t = np.arange(n_frames)[:, None]
    dist = np.abs(t - np.asarray(supports)[None, :])
    return np.argmin(dist, axis=1)  # argmin takes the first (earlier) on ties


def _warp_labels(labels: np.ndarray, ids: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample a label map at float positions ``coords`` (H, W, 2) (x, y) via one-hot bilinear warping."""
    out = best = None
    # chunks of up to 4 channels (cv2.remap is fastest on <= 4 channels)
    for start in range(0, len(ids), 4):
        chunk = ids[start : start + 4]
        onehot = np.stack([(labels == i) for i in chunk], axis=-1).astype(np.float32)
        warped = cv2.remap(
            onehot, coords, None, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if warped.ndim == 2:
            warped = warped[..., None]
        arg = np.argmax(warped, axis=-1)
        val = np.take_along_axis(warped, arg[..., None], axis=-1)[..., 0]
        lab = chunk[arg].astype(np.uint8)
        if best is None:
            best, out = val, lab
        else:
            better = val > best
            best = np.where(better, val, best)
            out = np.where(better, lab, out)
    return out


def propagate_flow(
    frames: np.ndarray,
    supports: Mapping[int, np.ndarray],
    *,
    preset: str = "medium",
    presmooth_sigma: float = 0.0,
    flow_engine: Optional[object] = None,
) -> np.ndarray:
    """Propagate support label maps to every frame with chained DIS optical flow.

    Parameters
    ----------
    frames:
        uint8 array (T, H, W), the grey cine.
    supports:
        ``{frame_index: labels}`` with labels an integer (H, W) array,
        0 = background, 1..255 = objects.  At least one support; negative
        indices are not allowed.
    preset:
        DIS preset, one of ``"ultrafast"``, ``"fast"``, ``"medium"`` (default).
    presmooth_sigma:
        Gaussian sigma in pixels applied to the frames before the flow is
        computed (0 = none); helps on very noisy low-dose cines.
    flow_engine:
        Optional pre-built ``cv2.DISOpticalFlow`` (overrides ``preset``).

    Returns
    -------
    uint8 array (T, H, W) of labels; support frames are the given labels.

    Raises
    ------
    FsvosInputError
        Frames are not a (T, H, W) uint8 stack, there is no support, a support
        index is out of range, or a support map has the wrong shape or labels
        outside 0..255.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise FsvosInputError(
            f"frames must be a uint8 (T, H, W) array, got {frames.dtype} {frames.shape}"
        )
    n, h, w = frames.shape
    if not supports:
        raise FsvosInputError("at least one support frame is needed")
    if preset not in DIS_PRESETS and flow_engine is None:
        raise FsvosInputError(f"unknown DIS preset {preset!r}; use one of {sorted(DIS_PRESETS)}")
    sup: Dict[int, np.ndarray] = {}
    for t, lab in supports.items():
        t = int(t)
        if not 0 <= t < n:
            raise FsvosInputError(f"support frame {t} is outside 0..{n - 1}")
        lab = np.asarray(lab)
        if lab.shape != (h, w):
            raise FsvosInputError(f"support labels of frame {t} are {lab.shape}, frames are {(h, w)}")
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise FsvosInputError(f"support labels of frame {t} must be in 0..255")
        sup[t] = lab.astype(np.uint8)
    order = sorted(sup)

    dis = flow_engine if flow_engine is not None else cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    work = frames
    if presmooth_sigma > 0:
        work = np.stack([cv2.GaussianBlur(f, (0, 0), presmooth_sigma) for f in frames])

    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
    owner = _nearest_support(n, order)
    out = np.zeros((n, h, w), dtype=np.uint8)

    for k, s in enumerate(order):
        labels = sup[s]
        ids = np.union1d(np.array([0]), np.unique(labels)).astype(np.int64)
        out[s] = labels
        frames_of_s = np.nonzero(owner == k)[0]
        for step, stop in ((1, int(frames_of_s.max())), (-1, int(frames_of_s.min()))):
            coords = grid.copy()
            t = s + step
            while (t <= stop) if step > 0 else (t >= stop):
                # flow from frame t to the previous frame on the way from s
                flow = dis.calc(work[t], work[t - step], None)
                coords = cv2.remap(
                    coords, grid + flow, None,
                    interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
                )
                out[t] = _warp_labels(labels, ids, coords)
                t += step
    for s in order:  # exact supports (a support may lie in another's segment only if equal)
        out[s] = sup[s]
    return out
