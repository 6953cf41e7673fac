"""Training samples: triplets of frames with labels, cropped and augmented (paper Sec. 4.1.3 style).

A :class:`CinePool` holds cines in memory (synthetic XA cines generated on the fly
by :mod:`fsvos.synth`, or a user's cines, possibly labelled on some frames only).
:meth:`CinePool.sample` draws a triplet (STCN/XRAVOS: 3 frames in temporal order
with a random skip, randomly reversed; the first one labelled), picks up to
``max_objects`` objects present in the first frame, crops a square around one of
them and applies the same flip to all frames and intensity augmentation (gamma,
contrast, brightness, noise) per sample.  A :class:`StaticPool` makes triplets
from still images by random deformation (STCN's static-image stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Intensity:
    """Intensity augmentation of a sample (all frames alike), on frames scaled to [0, 1]:
    f**g, g = exp(N(0, gamma)); (f - mean) * c + mean + b, c = exp(N(0, contrast)),
    b = N(0, brightness); then noise N(0, U(0, noise)) per pixel.  The defaults are those the
    bundled default's stages 1-3 used."""

    gamma: float = 0.25
    contrast: float = 0.2
    brightness: float = 0.05
    noise: float = 0.02

    def apply(self, rng: np.random.Generator, f: np.ndarray) -> np.ndarray:
        f = np.clip(f, 1e-4, 1.0) ** float(np.exp(rng.normal(0, self.gamma)))
        f = (f - f.mean()) * float(np.exp(rng.normal(0, self.contrast))) + f.mean() + float(rng.normal(0, self.brightness))
        return f + rng.normal(0, float(rng.uniform(0, self.noise)), size=f.shape)


@dataclass
class Sample:
    frames: np.ndarray  # float32 (3, S, S) in [0, 1]
    labels: np.ndarray  # int64 (3, S, S) 0..K (0 everywhere on frames without labels)
    n_objects: int
    labelled: np.ndarray = field(default_factory=lambda: np.ones(3, bool))  # bool (3,): frame has true labels
    gap: int = 1  # frames between triplet frames 1 and 2 in the source cine


class CinePool:
    """Labelled cines for training.  cines: iterable of (frames uint8 (T,H,W), labels uint8 (T,H,W)).

    labelled: None (every frame has true labels) or, per cine, bool (T,) saying which frames
    are labelled (sparsely labelled cines).  The first frame of a triplet is always a
    labelled frame; the others may be unlabelled (their labels are zero and flagged).
    """

    def __init__(self, cines: Iterable[Tuple[np.ndarray, np.ndarray]], affine: bool = True,
                 labelled: Optional[Sequence[Optional[np.ndarray]]] = None):
        self.affine = bool(affine)
        self.intensity = Intensity()  # set from the training config (build_pool)
        self.cines: List[Tuple[np.ndarray, np.ndarray]] = [(np.asarray(f), np.asarray(l)) for f, l in cines]
        if not self.cines:
            raise ValueError("no training cines")
        if labelled is None:
            labelled = [None] * len(self.cines)
        if len(labelled) != len(self.cines):
            raise ValueError("labelled must give one entry per cine")
        self.labelled: List[Optional[np.ndarray]] = []
        self.synth: Optional[dict] = None  # how CinePool.synthetic made the pool (for refresh)
        for (f, _), m in zip(self.cines, labelled):
            m = None if m is None else np.asarray(m, bool)
            if m is not None and m.shape != (f.shape[0],):
                raise ValueError(f"labelled flags of shape {m.shape} for a cine of {f.shape[0]} frames")
            self.labelled.append(None if m is None or m.all() else m)

    @classmethod
    def synthetic(cls, n_cases: int, seed: int, size: int = 512, frames: Tuple[int, int] = (30, 60),
                  split: str = "all", progress=None, refresh_every: int = 0, refresh_cases: int = 0,
                  at_step: int = 0) -> "CinePool":
        """``n_cases`` synthetic cines from ``seed``.  With ``refresh_every``, the pool as it is at
        step ``at_step`` of a run that calls :meth:`refresh` every ``refresh_every`` steps (so that
        a resumed run draws from exactly the cines it would have had)."""
        rng = np.random.default_rng(seed)
        plan = []  # per slot: (frames, case seed) of the pool at step 0
        for _ in range(n_cases):
            n = int(rng.integers(frames[0], frames[1] + 1))
            plan.append((n, int(rng.integers(0, 2**31 - 1))))
        rounds = (at_step - 1) // refresh_every if refresh_every and at_step > 0 else 0
        for r in range(1, rounds + 1):  # the slots later refreshes replaced, with their cines' seeds
            for slot in refresh_slots(r, n_cases, refresh_cases):
                plan[slot] = refresh_case(seed, r, slot, frames)
        cines = []
        for i, (n, case_seed) in enumerate(plan):
            cines.append(_synthetic_cine(case_seed, n, size, split))
            if progress:
                progress(i + 1, n_cases)
        pool = cls(cines)
        pool.synth = dict(seed=seed, size=size, frames=tuple(frames), split=split, refresh_cases=refresh_cases)
        return pool

    def refresh(self, round_: int) -> List[int]:
        """Refresh number ``round_`` (1, 2, ...) of a synthetic pool: new cines, made from seeds
        of (data seed, round, slot), replace ``refresh_cases`` slots in turn.  Returns the slots."""
        cfg = self.synth
        if cfg is None:
            raise ValueError("only a pool made by CinePool.synthetic can be refreshed")
        slots = refresh_slots(round_, len(self.cines), cfg["refresh_cases"])
        for slot in slots:
            n, case_seed = refresh_case(cfg["seed"], round_, slot, cfg["frames"])
            self.cines[slot] = _synthetic_cine(case_seed, n, cfg["size"], cfg["split"])
            self.labelled[slot] = None
        return slots

    def sample(self, rng: np.random.Generator, crop: int, max_skip: int, max_objects: int,
               tries: int = 50, unlabelled_targets: bool = False) -> Sample:
        """A random triplet.  ``unlabelled_targets``: on sparsely labelled cines, allow triplets whose
        frames 1 and 2 are both unlabelled (useful only with the consistency loss)."""
        for _ in range(tries):
            ci = int(rng.integers(len(self.cines)))
            frames, labels = self.cines[ci]
            flags = self.labelled[ci]
            t = frames.shape[0]
            if t < 3:
                continue
            s1 = int(rng.integers(1, max_skip + 1))
            s2 = int(rng.integers(1, max_skip + 1))
            if flags is None:  # every frame labelled (the original STCN draw)
                if s1 + s2 >= t:
                    continue
                start = int(rng.integers(0, t - s1 - s2))
                idx = [start, start + s1, start + s1 + s2]
                if rng.random() < 0.5:
                    idx = idx[::-1]
                lab_flags = np.ones(3, bool)
            else:  # the first frame is a labelled one, the direction is random
                first = np.flatnonzero(flags)
                i0 = int(first[int(rng.integers(len(first)))])
                d = 1 if rng.random() < 0.5 else -1
                idx = [i0, i0 + d * s1, i0 + d * (s1 + s2)]
                if not 0 <= idx[2] < t:
                    continue
                lab_flags = flags[idx].copy()
                if not unlabelled_targets and not (lab_flags[1] or lab_flags[2]):
                    continue
            sample = make_triplet(rng, frames, labels, idx, crop, max_objects, self.affine, lab_flags, s2,
                                  self.intensity)
            if sample is not None:
                return sample
        raise RuntimeError("could not draw a training sample with a labelled first frame")


def _synthetic_cine(case_seed: int, n_frames: int, size: int, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(frames, labels) of one synthetic cine of :mod:`fsvos.synth`."""
    from ..synth import generate_case

    case = generate_case(case_seed, size=size, n_frames=n_frames, split=split)
    return case.frames, case.labels


def refresh_slots(round_: int, n_cases: int, refresh_cases: int = 0) -> List[int]:
    """Pool slots replaced by refresh ``round_`` (>= 1): ``refresh_cases`` (0: a quarter of the
    pool, at least 1) consecutive slots, continuing where the previous refresh stopped."""
    q = refresh_cases or max(1, n_cases // 4)
    return [((round_ - 1) * q + i) % n_cases for i in range(min(q, n_cases))]


def refresh_case(seed: int, round_: int, slot: int, frames: Tuple[int, int]) -> Tuple[int, int]:
    """(frame count, case seed) of the cine that refresh ``round_`` puts in ``slot``."""
    rng = np.random.default_rng([seed, round_, slot])
    return int(rng.integers(frames[0], frames[1] + 1)), int(rng.integers(0, 2**31 - 1))


class StaticPool:
    """Still images with labels, each turned into a 3-frame sample by random deformations
    (:mod:`fsvos.train.deform`; the static-image stage of STCN).  images: iterable of
    (image uint8 (H, W), labels uint8 (H, W)); the crop/flip/intensity augmentation is the
    cines' (:func:`make_triplet`)."""

    def __init__(self, images: Iterable[Tuple[np.ndarray, np.ndarray]], elastic: float = 0.02,
                 affine: bool = True):
        self.images = [(np.asarray(i), np.asarray(l)) for i, l in images]
        self.images = [(i, l) for i, l in self.images if l.any()]
        if not self.images:
            raise ValueError("no training images with labels")
        self.elastic, self.affine = float(elastic), bool(affine)
        self.intensity = Intensity()

    @classmethod
    def from_cines(cls, pool: CinePool, elastic: float = 0.02) -> "StaticPool":
        """Every labelled frame of the cines of ``pool`` as a still image (views, no copies)."""
        images = []
        for (frames, labels), flags in zip(pool.cines, pool.labelled):
            for t in range(frames.shape[0]):
                if flags is None or flags[t]:
                    images.append((frames[t], labels[t]))
        return cls(images, elastic=elastic, affine=pool.affine)

    def sample(self, rng: np.random.Generator, crop: int, max_skip: int, max_objects: int,
               tries: int = 50, unlabelled_targets: bool = False) -> Sample:
        from .deform import deformed_triplet

        for _ in range(tries):
            image, labels = self.images[int(rng.integers(len(self.images)))]
            frames3, labels3 = deformed_triplet(rng, image, labels, self.elastic)
            sample = make_triplet(rng, frames3, labels3, [0, 1, 2], crop, max_objects, self.affine,
                                  np.ones(3, bool), 1, self.intensity)
            if sample is not None:
                return sample
        raise RuntimeError("could not draw a training sample with a labelled first frame")


def make_triplet(rng: np.random.Generator, frames: np.ndarray, labels: np.ndarray, idx: Sequence[int], crop: int,
                 max_objects: int, affine: bool, labelled: np.ndarray, gap: int,
                 intensity: Intensity = Intensity()) -> Optional[Sample]:
    """Frames ``idx`` of a cine (uint8 (T, H, W), labels (T, H, W)) -> an augmented :class:`Sample`,
    or None when the first frame shows no object (after cropping).

    Up to ``max_objects`` objects of the first frame are kept (renumbered 1..K); a square crop
    around one of them through a random affine map (paper Sec. 4.1.3), flips, blur and
    intensity augmentation, the same geometry for the 3 frames.
    """
    present = [int(v) for v in np.unique(labels[idx[0]]) if v]
    if not present:
        return None
    chosen = list(rng.permutation(present)[:max_objects])
    f = frames[idx].astype(np.float32) / 255.0
    lab = np.zeros((3,) + frames.shape[1:], np.int64)
    for new, old in enumerate(chosen, start=1):
        lab[labels[idx] == old] = new
    lab[~np.asarray(labelled, bool)] = 0
    # crop around a random pixel of a random chosen object, through a random affine map
    # (paper Sec. 4.1.3: resized crop, rotation +-15 deg, shear +-10 deg), same for all 3 frames
    h, w = frames.shape[1:]
    c = min(crop, h, w)
    ys, xs = np.nonzero(lab[0] == int(rng.integers(1, len(chosen) + 1)))
    j = int(rng.integers(len(ys)))
    centre = (float(xs[j] + rng.integers(-c // 3, c // 3 + 1)), float(ys[j] + rng.integers(-c // 3, c // 3 + 1)))
    m = random_affine(rng, c, centre) if affine else None
    if m is None:
        cy = int(np.clip(centre[1] - c // 2, 0, h - c))
        cx = int(np.clip(centre[0] - c // 2, 0, w - c))
        f = f[:, cy:cy + c, cx:cx + c]
        lab = lab[:, cy:cy + c, cx:cx + c]
    else:
        f, lab = warp_triplet(f, lab, m, c)
    if not (lab[0] > 0).any():
        return None
    if affine and rng.random() < 0.3:  # a little blur: other scanners, other generators
        f = blur(f, float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        f, lab = f[:, :, ::-1], lab[:, :, ::-1]
    if rng.random() < 0.5:
        f, lab = f[:, ::-1], lab[:, ::-1]
    f = intensity.apply(rng, f)  # gamma, contrast, brightness per sample, a little noise per pixel
    # the engine sees 8-bit frames: quantise as it will
    f = np.round(np.clip(f, 0, 1) * 255) / 255
    return Sample(np.ascontiguousarray(f, dtype=np.float32), np.ascontiguousarray(lab), len(chosen),
                  np.asarray(labelled, bool).copy(), int(gap))


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
    """-> frames float32 (B, 3, 1, S, S), labels int64 (B, 3, S, S), selector float32 (B, K).

    (:func:`collate_flags` gives the per-frame label flags and the frame gaps.)"""
    import torch

    frames = torch.from_numpy(np.stack([s.frames for s in samples]))[:, :, None]
    labels = torch.from_numpy(np.stack([s.labels for s in samples]))
    selector = torch.zeros(len(samples), max_objects)
    for i, s in enumerate(samples):
        selector[i, :s.n_objects] = 1
    return frames, labels, selector


def collate_flags(samples: Sequence[Sample]):
    """-> labelled bool (B, 3), gap long (B,) (frames between triplet frames 1 and 2)."""
    import torch

    labelled = torch.from_numpy(np.stack([s.labelled for s in samples]))
    gap = torch.tensor([s.gap for s in samples], dtype=torch.long)
    return labelled, gap
