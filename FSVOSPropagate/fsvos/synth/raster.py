"""Rasterise tubes (vessels, catheters, wires, devices) into pixel footprints.

A tube is a centreline polyline with a radius per point.  Its footprint on a
pixel canvas lists, for every pixel near the tube, the projected thickness of
the tube there and where along the centreline the pixel lies.  Layers built
from footprints are sums over ``np.bincount`` of the flat pixel indices, so
overlapping tubes add up, as X-ray attenuation does.

Projected thickness: a cylinder of radius r seen side-on has chord length
``2 sqrt(r^2 - d^2)`` at distance d from its axis.  Each pixel gets the chord
averaged over the pixel's width across the tube (closed form, see
:func:`pixel_chord`), i.e. anti-aliased partial-volume values, so tubes
thinner than a pixel keep their total attenuation (pi r^2 per unit length).

Coordinates: pixel (row i, column j) has its centre at (x=j, y=i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
from scipy.spatial import cKDTree

#: label radius floor in pixels: a tube thinner than this is labelled as a ~1-px line
MIN_LABEL_RADIUS_PX = 0.5


@dataclass
class Footprint:
    """Pixels covered by a tube on a canvas.

    Attributes
    ----------
    idx:
        int64 (M,) flat pixel indices into the canvas (row-major).
    thickness:
        float32 (M,) pixel-averaged chord length in pixels (>= 0).
    inside:
        bool (M,) True where the pixel belongs to the tube's label:
        distance to the centreline <= max(radius, MIN_LABEL_RADIUS_PX).
    u:
        float32 (M,) arc length (pixels) of the nearest centreline point,
        from the first point.
    v:
        float32 (M,) signed distance (pixels) from the centreline (left of
        the direction of travel is positive).
    radius:
        float32 (M,) tube radius (pixels) at the nearest centreline point.
    """

    idx: np.ndarray
    thickness: np.ndarray
    inside: np.ndarray
    u: np.ndarray
    v: np.ndarray
    radius: np.ndarray

    def select(self, keep: np.ndarray) -> "Footprint":
        """Footprint restricted to the entries where ``keep`` is True."""
        return Footprint(*(a[keep] for a in (self.idx, self.thickness, self.inside, self.u, self.v, self.radius)))


def resample_polyline(points: np.ndarray, values: np.ndarray, step: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a polyline at a constant arc-length step.

    Parameters
    ----------
    points:
        float (N, 2) x, y.
    values:
        float (N,) or (N, k) per-point values, linearly interpolated.
    step:
        Spacing in the units of ``points``.

    Returns
    -------
    (points (M, 2), values (M, ...), arc length (M,)) with M >= 2.
    """
    pts = np.asarray(points, dtype=np.float64)
    seg = np.hypot(*np.diff(pts, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    m = max(2, int(np.ceil(total / step)) + 1)
    s_new = np.linspace(0.0, total, m)
    x = np.interp(s_new, s, pts[:, 0])
    y = np.interp(s_new, s, pts[:, 1])
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 1:
        v_new = np.interp(s_new, s, vals)
    else:
        v_new = np.stack([np.interp(s_new, s, vals[:, k]) for k in range(vals.shape[1])], axis=1)
    return np.stack([x, y], axis=1), v_new, s_new


def pixel_chord(d: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Chord of a cylinder of radius ``r`` averaged over [d - 0.5, d + 0.5] (all in pixels).

    Uses the antiderivative G(x) = x sqrt(r^2 - x^2) + r^2 asin(x / r) of
    2 sqrt(r^2 - x^2).  float arrays of equal shape in, float32 out.
    """
    r = np.maximum(r, 1e-6)
    lo = np.clip(d - 0.5, -r, r)
    hi = np.clip(d + 0.5, -r, r)

    def g(x):
        return x * np.sqrt(np.maximum(r * r - x * x, 0.0)) + r * r * np.arcsin(np.clip(x / r, -1.0, 1.0))

    return np.maximum(g(hi) - g(lo), 0.0).astype(np.float32)


def tube_footprint(
    points: np.ndarray,
    radii: np.ndarray,
    shape: Tuple[int, int],
    *,
    flat_start: bool = False,
    step: float = 0.25,
) -> Footprint:
    """Footprint of a tube on an (H, W) canvas.

    Parameters
    ----------
    points:
        float (N, 2) centreline x, y in canvas pixels, N >= 2.
    radii:
        float (N,) radius in pixels at each point (> 0).
    shape:
        Canvas (H, W).
    flat_start:
        Cut the tube square at its first point (no rounded cap), used for
        branches that start inside their parent vessel.
    step:
        Centreline resampling step in pixels (distance accuracy).

    Returns
    -------
    :class:`Footprint` (possibly empty when the tube lies off the canvas).
    """
    h, w = shape
    pts, rad, arc = resample_polyline(points, radii, step)
    rmax = float(rad.max())
    margin = int(np.ceil(max(rmax, MIN_LABEL_RADIUS_PX) + 1.5))
    x0 = max(int(np.floor(pts[:, 0].min())) - margin, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - margin, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + margin + 1, w)
    y1 = min(int(np.ceil(pts[:, 1].max())) + margin + 1, h)
    empty = Footprint(
        np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool),
        np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
    )
    if x1 <= x0 or y1 <= y0:
        return empty
    # candidate pixels: a thick polyline drawn in the bounding box (sub-pixel, shift=4)
    box = np.zeros((y1 - y0, x1 - x0), np.uint8)
    poly = np.round((pts - [x0, y0]) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(box, [poly], False, 1, thickness=2 * margin + 1, lineType=cv2.LINE_8, shift=4)
    yy, xx = np.nonzero(box)
    if yy.size == 0:
        return empty
    q = np.stack([xx + x0, yy + y0], axis=1).astype(np.float64)
    dist, k = cKDTree(pts).query(q, k=1)
    tangent = np.gradient(pts, axis=0)
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-12)[:, None]
    rel = q - pts[k]
    along = rel[:, 0] * tangent[k, 0] + rel[:, 1] * tangent[k, 1]
    # signed distance: positive on the left of the direction of travel (x right, y down)
    v = rel[:, 0] * tangent[k, 1] - rel[:, 1] * tangent[k, 0]
    r = rad[k]
    # at the ends the nearest point is the end point: distance there is Euclidean (round caps)
    d = dist
    keep = np.ones(len(q), bool)
    if flat_start:
        keep &= ~((k == 0) & (along < 0))
        d = np.where(k == 0, np.abs(v), d)
    thick = pixel_chord(d, r)
    inside = d <= np.maximum(r, MIN_LABEL_RADIUS_PX)
    keep &= (thick > 0) | inside
    idx = (q[:, 1].astype(np.int64) * w + q[:, 0].astype(np.int64))
    fp = Footprint(idx, thick, inside, arc[k].astype(np.float32), v.astype(np.float32), r.astype(np.float32))
    return fp.select(keep)


def accumulate(idx: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Sum ``weights`` into a flat float32 canvas of ``size`` pixels at ``idx`` (overlaps add)."""
    return np.bincount(idx, weights=weights, minlength=size).astype(np.float32)
