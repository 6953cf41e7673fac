"""Assemble one synthetic XA cine with dense labels: :func:`generate_case`.

Scene: a coronary tree (:mod:`.vessels`) filled by a contrast bolus
(:mod:`.contrast`), a guiding catheter, optionally a guidewire and up to two
devices (:mod:`.devices`), in front of background anatomy (:mod:`.anatomy`),
moving with the heart and breathing (:mod:`.motion`), imaged with X-ray
physics (:mod:`.xray`).

Labels (uint8, per pixel exactly one): 0 background, 1 vessel tree,
2 catheter, then guidewire and devices in this order when present (K <= 5,
consecutive).  Precedence where objects overlap in projection (higher wins):
devices > guidewire > catheter > vessel.  A vessel pixel is labelled only
when contrast is visible there, so the vessel label is empty before the injection, grows with the wash-in, is full
at opacification and shrinks (proximal first) during wash-out.  "Visible"
means an iodine attenuation across the lumen of at least
:data:`~fsvos.synth.contrast.VISIBLE_ATTENUATION`.

Labels are built in the heart's reference frame, then moved with the same
motion as the image (nearest-neighbour sampling, so labels stay exact
integers); they are free of noise and blur.

Determinism: everything derives from ``np.random.default_rng(seed)``; the
same arguments give byte-identical frames and labels (with the same numpy /
OpenCV versions on the same kind of CPU: OpenCV's SIMD paths may round
differently elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import cv2
import numpy as np

from .anatomy import make_anatomy
from .contrast import VISIBLE_ATTENUATION, catheter_concentration, concentration, sample_timing, visible
from .devices import (
    DEVICE_CATEGORIES,
    Device,
    make_balloon,
    make_catheter,
    make_guidewire,
    make_markers,
    make_stent,
    wire_path,
)
from .motion import breathing_shift, cardiac_field, sample_motion
from .raster import accumulate, tube_footprint
from .vessels import STEP, VesselTree, make_tree
from .xray import detect, window_cine

#: dataset splits: "all" (devices in some cases), "no-devices" (never balloon/stent/marker),
#: "devices" (every case has at least one device: a test set of classes unseen in "no-devices")
SPLITS = ("all", "no-devices", "devices")
#: label precedence, lowest first (a later category overwrites an earlier one)
LABEL_PRECEDENCE = ("vessel", "catheter", "guidewire", "balloon", "stent", "marker")
GENERATOR_VERSION = 1
MIN_SIZE = 64
MIN_FRAMES = 8


@dataclass
class SynthCase:
    """One synthetic cine.

    Attributes
    ----------
    frames: uint8 (T, H, W), windowed log image: vessels dark on a lighter background.
    labels: uint8 (T, H, W), 0 = background, 1..K objects (see :attr:`objects`).
    objects: list of ``{"label", "name", "category", "device"}`` dicts, by label.
    support_frame: index of the frame a clinician would annotate.
    params: JSON-able parameters of the scene.
    frame_time_ms: time between frames in ms.
    pixel_spacing_mm: detector pixel spacing in mm (square pixels).
    seed, size, split, low_dose: the generation arguments.
    """

    frames: np.ndarray
    labels: np.ndarray
    objects: List[Dict[str, Any]]
    support_frame: int
    params: Dict[str, Any]
    frame_time_ms: float
    pixel_spacing_mm: float
    seed: int = 0
    size: int = 512
    split: str = "all"
    low_dose: bool = False

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def _r(x: float, n: int = 4) -> float:
    return round(float(x), n)


def _plan_objects(rng: np.random.Generator, split: str) -> tuple:
    """(with_wire, device categories) for the split."""
    if split == "no-devices":
        return bool(rng.random() < 0.5), []
    if split == "devices":
        n = 1 if rng.random() < 0.6 else 2
        return True, list(rng.choice(DEVICE_CATEGORIES, size=n, replace=False))
    with_wire = bool(rng.random() < 0.6)
    if not with_wire:
        return False, ["stent"] if rng.random() < 0.2 else []
    n = int(rng.choice([0, 1, 2], p=[0.4, 0.4, 0.2]))
    return True, list(rng.choice(DEVICE_CATEGORIES, size=n, replace=False))


def _target_branch(rng: np.random.Generator, tree: VesselTree) -> int:
    """A main vessel (or the PDA) for the wire, weighted by length."""
    cands = [i for i, b in enumerate(tree.branches) if b.name in ("LAD", "LCX", "RCA", "PDA", "PL", "RI")]
    lengths = np.array([len(tree.branches[i].points) for i in cands], float)
    return int(rng.choice(cands, p=lengths / lengths.sum()))


def _in_fov(p: np.ndarray, margin: float = 30.0) -> bool:
    return bool(np.all(p >= margin) and np.all(p <= 512 - margin))


def _add_stenosis(rng: np.random.Generator, tree: VesselTree, branch: int, mm_per_px: float) -> Optional[dict]:
    """Narrow a branch locally (30-70 %) inside the field of view; returns its description."""
    b = tree.branches[branch]
    n = len(b.points)
    for _ in range(20):
        i = int(rng.uniform(0.15, 0.6) * n)
        if _in_fov(b.points[i], 50):
            sev = rng.uniform(0.3, 0.7)
            width = rng.uniform(1.5, 3.0) / mm_per_px / STEP
            k = np.arange(n)
            b.radii = np.maximum(b.radii * (1 - sev * np.exp(-(((k - i) / width) ** 2))), 0.7)
            return {"branch": b.name, "index": i, "severity": _r(sev, 3)}
    return None


def _device_centres(rng, pts: np.ndarray, first: Optional[int], count: int, min_gap: int,
                    at_least_one: bool) -> List[int]:
    """Sample indices on ``pts`` for ``count`` devices, the first near ``first``, all in view.

    With ``at_least_one``, a device that finds no place in view falls back to
    the point nearest the image centre.
    """
    n = len(pts)
    centres: List[int] = []
    for k in range(count):
        for _ in range(40):
            if k == 0 and first is not None:
                c = int(np.clip(first + rng.integers(-5, 6), 0, n - 1))
            else:
                c = int(rng.uniform(0.2, 0.9) * n)
            if _in_fov(pts[c], 40) and all(abs(c - o) >= min_gap for o in centres):
                centres.append(c)
                break
            first = None
    if at_least_one and not centres:
        centres.append(int(np.argmin(np.hypot(pts[:, 0] - 256, pts[:, 1] - 256))))
    return centres


def generate_case(
    seed: int,
    size: int = 512,
    n_frames: int = 50,
    split: str = "all",
    low_dose: Optional[bool] = None,
) -> SynthCase:
    """Generate one synthetic coronary angiography cine with exact labels.

    Parameters
    ----------
    seed:
        Any non-negative integer; same arguments -> byte-identical output.
    size:
        Frame height = width in pixels (>= 64); geometry scales with it
        (vessel radii 0.7-6 px at 512).
    n_frames:
        Number of frames (>= 8).
    split:
        "all", "no-devices" (no balloon/stent/marker) or "devices" (at least
        one of them).
    low_dose:
        True: low-dose fluoroscopy (about 10x fewer photons, lower frame
        rate); False: cine acquisition; None: drawn (25 % low dose).

    Returns
    -------
    :class:`SynthCase`.

    Raises
    ------
    ValueError
        Bad size, frame count or split.
    """
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    if int(n_frames) != n_frames or n_frames < MIN_FRAMES:
        raise ValueError(f"n_frames must be an integer >= {MIN_FRAMES}, got {n_frames!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    size, n_frames, seed = int(size), int(n_frames), int(seed)

    rng = np.random.default_rng(seed)
    scale = size / 512.0
    pad = int(np.ceil(0.12 * size))
    shape = (size + 2 * pad, size + 2 * pad)
    n_canvas = shape[0] * shape[1]
    mm_ref = float(rng.uniform(0.25, 0.32))  # mm per reference pixel
    mm_px = mm_ref / scale  # mm per output pixel
    if low_dose is None:
        low_dose = bool(rng.random() < 0.25)
    low_dose = bool(low_dose)
    frame_time_ms = float(rng.choice([66.667, 100.0, 133.333] if low_dose else [66.667, 66.667, 66.667, 33.333, 80.0]))

    # ---- geometry (reference pixels) -------------------------------------------------
    tree = make_tree(rng)
    all_pts = np.concatenate([b.points for b in tree.branches])
    heart_centre = (float(np.clip(all_pts[:, 0].mean(), 100, 412)), float(np.clip(all_pts[:, 1].mean(), 100, 412)))
    with_wire, device_cats = _plan_objects(rng, split)
    target = _target_branch(rng, tree)
    stenosis = None
    if device_cats or rng.random() < 0.4:
        stenosis = _add_stenosis(rng, tree, target, mm_ref)
    path = tree.path_to(target)
    offset = len(path.points) - len(tree.branches[target].points)
    first_centre = None if stenosis is None else offset + stenosis["index"]
    mu_iodine = float(rng.uniform(0.25, 0.4))  # per mm at full concentration

    root = tree.branches[0]
    tip_heading = float(np.arctan2(*(root.points[min(8, len(root.points) - 1)] - root.points[0])[::-1]))
    spine_x = float(np.clip(heart_centre[0] + rng.choice([-1, 1]) * rng.uniform(60, 260), -40, 552))
    objects: List[Device] = [make_catheter(rng, tree.ostium, tip_heading, mm_ref, spine_x)]
    wire_pts = wire_path(rng, path) if (with_wire or device_cats) else None
    if with_wire:
        objects.append(make_guidewire(rng, wire_pts, mm_ref))
    if device_cats:
        gap = int(25.0 / mm_ref / STEP)
        centres = _device_centres(rng, wire_pts, first_centre, len(device_cats), gap, split == "devices")
        for cat, c in zip(device_cats, centres):
            vessel_r = float(np.interp(c, np.arange(len(path.radii)), path.radii))
            if stenosis is not None and c == centres[0]:
                vessel_r = float(np.median(path.radii[max(c - 40, 0): c + 40]))
            if cat == "balloon":
                objects.append(make_balloon(rng, wire_pts, c, vessel_r, mm_ref, mu_iodine))
            elif cat == "stent":
                objects.append(make_stent(rng, path.points, c, vessel_r, mm_ref))
            else:
                objects.append(make_markers(rng, wire_pts, c, mm_ref))

    anatomy = make_anatomy(rng, size, pad, heart_centre, spine_x)
    motion = sample_motion(rng, frame_time_ms, heart_centre)
    timing = sample_timing(rng, n_frames, tree.max_path_length)
    counts_ref = float(rng.uniform(25, 80) if low_dose else rng.uniform(200, 600))
    counts = counts_ref / scale**2  # bigger pixels collect more photons
    spr = float(rng.uniform(0.1, 0.3))
    blur_ref = float(rng.uniform(0.5, 0.8))
    elec_ref = float(rng.uniform(1.0, 3.0))
    reflux_amp = float(rng.uniform(0.03, 0.1))
    reflux_sigma = float(rng.uniform(10, 22))
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))

    # ---- rasterise on the padded canvas ----------------------------------------------
    def canvas(pts: np.ndarray) -> np.ndarray:
        return pts * scale + pad

    v_idx, v_att, v_s, v_in, v_peak = [], [], [], [], []
    for b in tree.branches:
        fp = tube_footprint(canvas(b.points), b.radii * scale, shape, flat_start=b.parent >= 0)
        v_idx.append(fp.idx)
        v_att.append(fp.thickness * (mm_px * mu_iodine))
        v_s.append(b.s0 + fp.u / scale)
        v_in.append(fp.inside)
        v_peak.append(mu_iodine * 2.0 * fp.radius * mm_px)
    v_idx = np.concatenate(v_idx)
    v_att = np.concatenate(v_att).astype(np.float32)
    v_s = np.concatenate(v_s).astype(np.float32)
    v_in = np.concatenate(v_in)
    v_peak = np.concatenate(v_peak).astype(np.float32)
    # label entries: pixels inside a lumen, with their full-concentration attenuation
    l_idx, l_s, l_peak = v_idx[v_in], v_s[v_in], v_peak[v_in]

    heart_static = anatomy.heart.ravel().copy()
    label_static = np.zeros(n_canvas, np.uint8)
    obj_meta: List[Dict[str, Any]] = [{"label": 1, "name": "vessel tree", "category": "vessel", "device": False}]
    dev_params = []
    for k, dev in enumerate(objects):
        label = k + 2
        for part in dev.parts:
            fp = tube_footprint(canvas(part.points), part.radii * scale, shape)
            path_mm = part.pattern(fp, mm_px) if part.pattern is not None else fp.thickness * mm_px
            heart_static += accumulate(fp.idx, path_mm * part.mu_per_mm, n_canvas)
            if part.labelled:
                label_static[fp.idx[fp.inside]] = label
        obj_meta.append({"label": label, "name": dev.name, "category": dev.category,
                         "device": dev.category in DEVICE_CATEGORIES})
        dev_params.append({"name": dev.name, "category": dev.category, **dev.info})
    cath = objects[0]
    lumen_fp = tube_footprint(canvas(cath.parts[1].points), cath.parts[1].radii * scale, shape)
    lumen = accumulate(lumen_fp.idx, lumen_fp.thickness * (mm_px * mu_iodine), n_canvas)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    ox, oy = canvas(tree.ostium)
    reflux = (reflux_amp * np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * (reflux_sigma * scale) ** 2))).ravel()
    del xx, yy

    # ---- frames -------------------------------------------------------------------
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)), -1)
    static_bg = anatomy.static
    breath_bg = anatomy.breathing
    logs = np.empty((n_frames, size, size), np.float32)
    labels = np.empty((n_frames, size, size), np.uint8)
    n0 = None
    for t in range(n_frames):
        c = concentration(timing, v_s, t)
        cc = catheter_concentration(timing, t)
        heart = heart_static + accumulate(v_idx, v_att * c, n_canvas) + cc * (lumen + reflux)
        vis = accumulate(l_idx, visible(timing, l_s, l_peak, t).astype(np.float32), n_canvas)
        lab = np.where((label_static == 0) & (vis > 0), np.uint8(1), label_static)
        b = breathing_shift(motion, t, scale)
        field = cardiac_field(motion, t, (size, size), scale) + b.astype(np.float32)
        coords = grid - field + pad
        mu = cv2.remap(heart.reshape(shape), coords, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        labels[t] = cv2.remap(lab.reshape(shape), coords, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        for layer, frac in ((static_bg, motion.spine_fraction), (breath_bg, 1.0)):
            m = np.float32([[1, 0, pad - frac * b[0]], [0, 1, pad - frac * b[1]]])
            mu += cv2.warpAffine(layer, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
        if n0 is None:  # exposure control: set the dose on the first frame's median attenuation
            n0 = counts * float(np.exp(np.median(mu)))
        logs[t] = detect(mu, n0, noise_rng, spr=spr, blur_sigma_px=blur_ref * scale if blur_ref * scale >= 0.3 else 0.0,
                         electronic_sigma=elec_ref)
    frames = window_cine(logs, unsharp=0.5 if not low_dose else 0.3, unsharp_sigma_px=max(4.0 * scale, 1.0))
    del logs

    # ---- support frame: early in the injection, not necessarily full ------------------
    area = (labels == 1).sum(axis=(1, 2))
    q = float(rng.uniform(0.45, 0.85))
    support = int(np.argmax(area >= q * area.max())) if area.max() > 0 else 0

    # objects must be visible on the support frame; drop and renumber the others
    present = [m for m in obj_meta if np.any(labels[support] == m["label"])]
    if len(present) != len(obj_meta):
        lut = np.zeros(256, np.uint8)
        for new, m in enumerate(present, start=1):
            lut[m["label"]] = new
            m["label"] = new
        labels = lut[labels]
        obj_meta = present

    params: Dict[str, Any] = {
        "generator": "fsvos.synth",
        "generator_version": GENERATOR_VERSION,
        "mm_per_px_at_512": _r(mm_ref),
        "low_dose": low_dose,
        "mean_counts_per_px_at_512": _r(counts_ref, 2),
        "scatter_to_primary": _r(spr),
        "detector_blur_sigma_px_at_512": _r(blur_ref),
        "electronic_noise_counts": _r(elec_ref),
        "iodine_mu_per_mm": _r(mu_iodine),
        "tree": {"kind": tree.kind, "n_branches": len(tree.branches),
                 "ostium": [_r(tree.ostium[0], 2), _r(tree.ostium[1], 2)],
                 "branches": [b.name for b in tree.branches], "wire_target": tree.branches[target].name},
        "stenosis": stenosis,
        "devices": dev_params,
        "contrast": timing.as_dict(),
        "motion": motion.as_dict(),
        "anatomy": anatomy.params,
        "vessel_visibility_attenuation": VISIBLE_ATTENUATION,
        "label_precedence": list(LABEL_PRECEDENCE),
        "support_fill_fraction": _r(q),
        "vessel_area_per_frame": [int(a) for a in area],
    }
    return SynthCase(
        frames=frames,
        labels=labels,
        objects=obj_meta,
        support_frame=support,
        params=params,
        frame_time_ms=frame_time_ms,
        pixel_spacing_mm=_r(mm_px, 6),
        seed=seed,
        size=size,
        split=split,
        low_dose=low_dose,
    )
