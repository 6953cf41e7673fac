"""Training samples: triplets of frames with labels, cropped and augmented (paper Sec. 4.1.3 style).

A :class:`CinePool` holds labelled cines in memory (synthetic XA cines generated on
the fly by :mod:`fsvos.synth`, or a user's cines).  :meth:`CinePool.sample` draws
a triplet (STCN/XRAVOS: 3 frames in temporal order with a random skip, randomly
reversed), picks up to ``max_objects`` objects present in the first frame, crops
a square around one of them and applies the same flip to all frames and
intensity augmentation (gamma, contrast, brightness, noise) per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import numpy as np


@dataclass
class Sample:
    frames: np.ndarray  # float32 (3, S, S) in [0, 1]
    labels: np.ndarray  # int64 (3, S, S) 0..K
    n_objects: int


class CinePool:
    """Labelled cines for training.  cines: iterable of (frames uint8 (T,H,W), labels uint8 (T,H,W))."""

    def __init__(self, cines: Iterable[Tuple[np.ndarray, np.ndarray]], affine: bool = True):
        self.affine = bool(affine)
        self.cines: List[Tuple[np.ndarray, np.ndarray]] = [(np.asarray(f), np.asarray(l)) for f, l in cines]
        if not self.cines:
            raise ValueError("no training cines")

    @classmethod
    def synthetic(cls, n_cases: int, seed: int, size: int = 512, frames: Tuple[int, int] = (30, 60),
                  split: str = "all", progress=None) -> "CinePool":
        from ..synth import generate_case

        rng = np.random.default_rng(seed)
        cines = []
        for i in range(n_cases):
            n = int(rng.integers(frames[0], frames[1] + 1))
            case = generate_case(int(rng.integers(0, 2**31 - 1)), size=size, n_frames=n, split=split)
            cines.append((case.frames, case.labels))
            if progress:
                progress(i + 1, n_cases)
        return cls(cines)

    def sample(self, rng: np.random.Generator, crop: int, max_skip: int, max_objects: int,
               tries: int = 50) -> Sample:
        for _ in range(tries):
            frames, labels = self.cines[int(rng.integers(len(self.cines)))]
            t = frames.shape[0]
            if t < 3:
                continue
            s1 = int(rng.integers(1, max_skip + 1))
            s2 = int(rng.integers(1, max_skip + 1))
            if s1 + s2 >= t:
                continue
            start = int(rng.integers(0, t - s1 - s2))
            idx = [start, start + s1, start + s1 + s2]
            if rng.random() < 0.5:
                idx = idx[::-1]
            present = [int(v) for v in np.unique(labels[idx[0]]) if v]
            if not present:
                continue
            chosen = list(rng.permutation(present)[:max_objects])
            f = frames[idx].astype(np.float32) / 255.0
            lab = np.zeros((3,) + frames.shape[1:], np.int64)
            for new, old in enumerate(chosen, start=1):
                lab[labels[idx] == old] = new
            # crop around a random pixel of a random chosen object, through a random affine map
            # (paper Sec. 4.1.3: resized crop, rotation +-15 deg, shear +-10 deg), same for all 3 frames
            h, w = frames.shape[1:]
            c = min(crop, h, w)
            ys, xs = np.nonzero(lab[0] == int(rng.integers(1, len(chosen) + 1)))
            j = int(rng.integers(len(ys)))
            centre = (float(xs[j] + rng.integers(-c // 3, c // 3 + 1)), float(ys[j] + rng.integers(-c // 3, c // 3 + 1)))
            m = random_affine(rng, c, centre) if self.affine else None
            if m is None:
                cy = int(np.clip(centre[1] - c // 2, 0, h - c))
                cx = int(np.clip(centre[0] - c // 2, 0, w - c))
                f = f[:, cy:cy + c, cx:cx + c]
                lab = lab[:, cy:cy + c, cx:cx + c]
            else:
                f, lab = warp_triplet(f, lab, m, c)
            if not (lab[0] > 0).any():
                continue
            if self.affine and rng.random() < 0.3:  # a little blur: other scanners, other generators
                f = blur(f, float(rng.uniform(0.3, 1.0)))
            if rng.random() < 0.5:
                f, lab = f[:, :, ::-1], lab[:, :, ::-1]
            if rng.random() < 0.5:
                f, lab = f[:, ::-1], lab[:, ::-1]
            # intensity: gamma, contrast, brightness per sample, a little noise per frame
            f = np.clip(f, 1e-4, 1.0) ** float(np.exp(rng.normal(0, 0.25)))
            f = (f - f.mean()) * float(np.exp(rng.normal(0, 0.2))) + f.mean() + float(rng.normal(0, 0.05))
            f = f + rng.normal(0, float(rng.uniform(0, 0.02)), size=f.shape)
            # the engine sees 8-bit frames: quantise as it will
            f = np.round(np.clip(f, 0, 1) * 255) / 255
            return Sample(np.ascontiguousarray(f, dtype=np.float32), np.ascontiguousarray(lab), len(chosen))
        raise RuntimeError("could not draw a training sample with a labelled first frame")


def random_affine(rng: np.random.Generator, crop: int, centre: Tuple[float, float]) -> np.ndarray:
    """2x3 map from source pixels to a crop x crop output centred on ``centre`` (x, y):
    zoom 0.75-1.33 (log-uniform), aspect 0.8-1.25, rotation +-15 deg, shear +-10 deg."""
    zoom = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    rot = np.deg2rad(rng.uniform(-15, 15))
    shear = np.tan(np.deg2rad(rng.uniform(-10, 10)))
    a = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    a = a @ np.diag([zoom * np.sqrt(aspect), zoom / np.sqrt(aspect)])
    out_c = np.array([(crop - 1) / 2.0, (crop - 1) / 2.0])
    t = out_c - a @ np.asarray(centre, dtype=np.float64)
    return np.hstack([a, t[:, None]]).astype(np.float32)


def warp_triplet(frames: np.ndarray, labels: np.ndarray, m: np.ndarray, crop: int):
    """Apply the 2x3 map ``m`` to (3, H, W) frames (bilinear) and labels (nearest) -> (3, crop, crop)."""
    import cv2

    f = np.stack([cv2.warpAffine(fr, m, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                  for fr in frames])
    lab = np.stack([cv2.warpAffine(lb.astype(np.uint8), m, (crop, crop), flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_REPLICATE) for lb in labels]).astype(np.int64)
    return f, lab


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(fr, (0, 0), sigma) for fr in frames])


def collate(samples: Sequence[Sample], max_objects: int):
    """-> frames float32 (B, 3, 1, S, S), labels int64 (B, 3, S, S), selector float32 (B, K)."""
    import torch

    frames = torch.from_numpy(np.stack([s.frames for s in samples]))[:, :, None]
    labels = torch.from_numpy(np.stack([s.labels for s in samples]))
    selector = torch.zeros(len(samples), max_objects)
    for i, s in enumerate(samples):
        selector[i, :s.n_objects] = 1
    return frames, labels, selector
