"""Interventional devices: catheter, guidewire, balloon, stent, marker pair.

Every device is a :class:`Device`: a list of tube parts (centreline + radius
per point in reference pixels, attenuation per mm of projected thickness),
some of which make up its label.  Geometry:

* catheter: a 5-7 F tube (outer radius 0.8-1.1 mm) entering from the bottom
  of the field along the descending aorta (femoral access) or from the top
  (radial access), arching over and ending with its tip in the ostium; its
  lumen fills with contrast while injecting (handled by the case assembly);
* guidewire: a 0.014" wire (radius 0.18 mm) from the catheter tip along a
  vessel path, smoothed so that it cuts the inner side of bends, ending
  before the distal end; its radio-opaque distal 30 mm is twice as dense;
* balloon: an inflated, contrast-filled balloon (10-20 mm, tapered
  shoulders, radius 0.9-1.2 x the vessel) on the wire, with two platinum
  marker bands at its ends;
* stent: a deployed stent (12-30 mm) whose diamond strut mesh is projected
  through both walls (oblique walls look denser);
* marker: the two marker bands of an undeployed balloon or stent on the wire
  (one object made of two dots).

Categories "balloon", "stent" and "marker" are the *device classes*
(:data:`DEVICE_CATEGORIES`); the "no-devices" split never contains them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .raster import Footprint, resample_polyline
from .vessels import STEP, Branch

#: categories that count as devices (absent from the "no-devices" split)
DEVICE_CATEGORIES = ("balloon", "stent", "marker")


@dataclass
class TubePart:
    """One tube of a device (reference pixels)."""

    points: np.ndarray
    radii: np.ndarray
    mu_per_mm: float
    labelled: bool = True
    #: optional (footprint, mm per canvas px) -> path length in mm (M,), replacing the chord
    pattern: Optional[Callable[[Footprint, float], np.ndarray]] = None


@dataclass
class Device:
    """A labelled object made of tube parts."""

    name: str
    category: str
    parts: List[TubePart] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _catmull_rom(ctrl: np.ndarray, samples_per_seg: int = 40) -> np.ndarray:
    """Centripetal-free (uniform) Catmull-Rom spline through the control points (M, 2)."""
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    t = np.linspace(0, 1, samples_per_seg, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(
            0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                   + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    out.append(ctrl[-1:])
    return np.vstack(out)


def make_catheter(
    rng: np.random.Generator, ostium: np.ndarray, tip_heading: float, mm_per_px: float, spine_x: float
) -> Device:
    """Guiding catheter from the field edge to the ostium (reference pixels).

    Femoral access (70 %): the shaft rises beside the spine (descending
    aorta), arches over outside the top of the field and comes down the
    ascending aorta, its tip hooking into the ostium along ``tip_heading``
    (the vessel direction there).  Radial access: from the top only.  The
    wall (braided polymer) is dense and the lumen is not, which gives the
    tram-track look; the lumen fills with contrast while injecting.
    """
    femoral = rng.random() < 0.7
    r_out = rng.uniform(0.8, 1.1) / mm_per_px
    r_in = 0.72 * r_out
    tip_dir = np.array([np.cos(tip_heading), np.sin(tip_heading)])
    back = ostium - tip_dir * rng.uniform(25, 45)
    above = np.array([back[0] - tip_dir[0] * rng.uniform(10, 40) + rng.normal(0, 15),
                      min(back[1], ostium[1]) - rng.uniform(70, 130)])
    if femoral:
        x_shaft = float(spine_x + rng.uniform(-45, 45))
        ctrl = [
            [x_shaft + rng.normal(0, 6), 640.0],
            [x_shaft + rng.normal(0, 6), 380.0],
            [x_shaft + rng.normal(0, 10), 140.0],
            [x_shaft + 0.3 * (above[0] - x_shaft), -70.0 + rng.normal(0, 15)],
            [0.5 * (x_shaft + above[0]), -120.0 + rng.normal(0, 15)],
            [above[0] + 0.2 * (above[0] - x_shaft), -60.0],
            above,
            back,
            ostium,
        ]
    else:
        side = 1.0 if ostium[0] < 256 else -1.0
        x_top = float(np.clip(above[0] + side * rng.uniform(20, 100), -40, 552))
        ctrl = [[x_top + side * 90, -140.0], [x_top, -40.0], above, back, ostium]
    pts = _catmull_rom(np.asarray(ctrl, dtype=np.float64))
    pts, _, _ = resample_polyline(pts, np.zeros(len(pts)), STEP)
    taper = np.ones(len(pts))
    taper[-8:] = np.linspace(1.0, 0.85, 8)  # soft tip
    mu_wall = rng.uniform(0.3, 0.45)
    parts = [
        TubePart(pts, r_out * taper, mu_wall),
        TubePart(pts, r_in * taper, -mu_wall, labelled=False),  # hollow lumen
    ]
    info = {"access": "femoral" if femoral else "radial", "radius_mm": round(float(r_out * mm_per_px), 3),
            "lumen_radius_px": float(r_in)}
    return Device("catheter", "catheter", parts, info=info)


def wire_path(rng: np.random.Generator, path: Branch) -> np.ndarray:
    """Guidewire centreline (N, 2) along a vessel path, smoothed to cut bends, ending before its end."""
    pts = path.points
    smooth = np.stack([gaussian_filter1d(pts[:, k], 8.0 / STEP, mode="nearest") for k in range(2)], 1)
    # keep the first point at the ostium
    w = np.clip(np.arange(len(pts)) * STEP / 20.0, 0, 1)[:, None]
    smooth = (1 - w) * pts + w * smooth
    end = int(len(pts) * rng.uniform(0.85, 0.97))
    return smooth[: max(end, 8)]


def make_guidewire(rng: np.random.Generator, pts: np.ndarray, mm_per_px: float) -> Device:
    """0.014" guidewire along ``pts`` (reference pixels) with a denser distal tip."""
    r = 0.18 / mm_per_px
    mu = rng.uniform(1.0, 1.5)
    tip_len = int(30.0 / mm_per_px / STEP)
    n = len(pts)
    split = max(n - tip_len, 2)
    parts = [TubePart(pts[: split + 1], np.full(split + 1, r), mu)]
    if n - split >= 2:
        parts.append(TubePart(pts[split:], np.full(n - split, r * 1.1), mu * 2.0))
    return Device("guidewire", "guidewire", parts, info={"radius_mm": 0.18, "length_px": round(n * STEP, 1)})


def _segment(pts: np.ndarray, centre: int, half: int) -> np.ndarray:
    return pts[max(centre - half, 0): min(centre + half + 1, len(pts))]


def _bands(pts: np.ndarray, centres: List[int], mm_per_px: float, mu: float) -> List[TubePart]:
    half = max(int(0.5 / mm_per_px / STEP), 1)
    r = 0.45 / mm_per_px
    return [TubePart(_segment(pts, c, half), np.full(len(_segment(pts, c, half)), r), mu) for c in centres]


def make_balloon(rng, pts: np.ndarray, centre: int, vessel_r: float, mm_per_px: float, mu_iodine: float) -> Device:
    """Inflated balloon centred at sample ``centre`` of the wire centreline ``pts``."""
    length_mm = rng.uniform(10, 20)
    half = int(length_mm / 2 / mm_per_px / STEP)
    seg = _segment(pts, centre, half)
    n = len(seg)
    r = max(vessel_r * rng.uniform(0.9, 1.2), 1.0 / mm_per_px * 0.5)
    shoulder = max(int(2.0 / mm_per_px / STEP), 2)
    prof = np.ones(n)
    ramp = np.linspace(0.35, 1.0, min(shoulder, n // 2))
    prof[: len(ramp)] = ramp
    prof[n - len(ramp):] = ramp[::-1]
    body = TubePart(seg, r * prof, mu_iodine * rng.uniform(0.4, 0.6))
    i0 = max(centre - half + shoulder, 0)
    i1 = min(centre + half - shoulder, len(pts) - 1)
    parts = [body] + _bands(pts, [i0, i1], mm_per_px, rng.uniform(1.5, 2.2))
    return Device("balloon", "balloon", parts, info={"length_mm": round(float(length_mm), 2),
                                                     "radius_px": round(float(r), 3)})


def _stent_pattern(cell_mm: float, strut_w_mm: float, strut_t_mm: float, phase: float) -> Callable[[Footprint, float], np.ndarray]:
    """Diamond strut mesh of a cylinder seen through both walls.

    Returns a function giving, per footprint pixel, the metal path length in
    mm along the ray: for each wall (front and back) and each of the two
    helical strut families, the pixel coverage of the nearest strut (width
    ``strut_w_mm``, triangular pixel weighting) times the strut thickness
    ``strut_t_mm`` times the obliquity 1/cos(theta) of the wall there.
    """

    def pattern(fp: Footprint, mm_per_px: float) -> np.ndarray:
        r = np.maximum(fp.radius, 1e-3)
        sin_t = np.clip(fp.v / r, -0.995, 0.995)
        theta = np.arcsin(sin_t)
        obliq = np.minimum(1.0 / np.sqrt(1 - sin_t**2), 4.0)
        u = fp.u * mm_per_px
        cover_max = min(1.0, strut_w_mm / mm_per_px)
        total = np.zeros_like(u)
        for th in (theta, np.pi - theta):
            a = th * r * mm_per_px + phase
            for sgn in (1.0, -1.0):
                x = (a + sgn * u) / cell_mm
                dist = np.abs((x + 0.5) % 1.0 - 0.5) * cell_mm / np.sqrt(2.0)
                total += cover_max * np.clip(1.0 - dist / mm_per_px, 0.0, 1.0)
        inside = np.abs(fp.v) <= fp.radius
        return (strut_t_mm * obliq * total * inside).astype(np.float32)

    return pattern


def make_stent(rng, pts: np.ndarray, centre: int, vessel_r: float, mm_per_px: float) -> Device:
    """Deployed stent centred at sample ``centre`` of the vessel centreline ``pts``."""
    length_mm = rng.uniform(12, 30)
    half = int(length_mm / 2 / mm_per_px / STEP)
    seg = _segment(pts, centre, half)
    r = max(vessel_r * rng.uniform(1.0, 1.1), 0.6 / mm_per_px)
    mu = rng.uniform(3.0, 4.5)  # cobalt- or platinum-chromium, per mm
    part = TubePart(seg, np.full(len(seg), r), mu,
                    pattern=_stent_pattern(rng.uniform(1.0, 1.6), 0.1, rng.uniform(0.08, 0.1), rng.uniform(0, 2)))
    return Device("stent", "stent", [part], info={"length_mm": round(float(length_mm), 2),
                                                  "radius_px": round(float(r), 3)})


def make_markers(rng, pts: np.ndarray, centre: int, mm_per_px: float) -> Device:
    """Marker-band pair of an undeployed balloon/stent on the wire (one object, two dots)."""
    gap_mm = rng.uniform(10, 25)
    half = int(gap_mm / 2 / mm_per_px / STEP)
    centres = [max(centre - half, 0), min(centre + half, len(pts) - 1)]
    parts = _bands(pts, centres, mm_per_px, rng.uniform(1.5, 2.2))
    shaft = _segment(pts, centre, half)
    parts.append(TubePart(shaft, np.full(len(shaft), 0.3 / mm_per_px), 0.25, labelled=False))
    return Device("marker", "marker", parts, info={"gap_mm": round(float(gap_mm), 2)})
