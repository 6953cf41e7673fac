"""Background anatomy as attenuation maps (line integrals of mu, dimensionless).

Three layers, because they move differently:

* ``static``: soft tissue of the trunk (smooth thickness variation) and the
  spine (vertebral bodies with cortical rims, pedicles, disc spaces); the
  table and the spine barely move (a small fraction of the breathing drift);
* ``breathing``: lung fields (less attenuation, fine parenchymal texture),
  ribs (curved bands with cortical edges) and the diaphragm dome with the
  liver below it; they follow the breathing drift;
* ``heart``: the cardiac silhouette, which moves with the heart (built here,
  added to the heart layer by the case assembly).

Maps are float32 on a padded canvas (the frame plus ``pad`` pixels on each
side, so that motion never samples outside).  Parameters are drawn in
reference pixels (512 frame) and scaled by ``scale = size / 512``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import cv2
import numpy as np

from .raster import tube_footprint, accumulate


@dataclass
class Anatomy:
    """Attenuation layers on the padded canvas (float32 (Hp, Wp)) and their parameters."""

    static: np.ndarray
    breathing: np.ndarray
    heart: np.ndarray
    params: Dict[str, object]


def _smooth_field(rng: np.random.Generator, shape: Tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1], with ``cells`` blobs across the canvas."""
    coarse = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    f = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return f / max(float(np.abs(f).max()), 1e-6)


def _texture(rng: np.random.Generator, shape: Tuple[int, int], scale: float) -> np.ndarray:
    """Band-pass noise (lung parenchyma), unit standard deviation."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for cell, weight in ((3.0, 1.0), (7.0, 0.8), (16.0, 0.6)):
        c = max(cell * scale, 1.0)
        small = rng.standard_normal((max(int(h / c), 2), max(int(w / c), 2))).astype(np.float32)
        out += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / max(float(out.std()), 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))).astype(np.float32)


def _spine(rng, X, Y, scale, params, x_mid: float) -> np.ndarray:
    """Vertebral column at ``x_mid`` (reference px): rounded bodies with cortical rims, pedicles, disc spaces."""
    tilt = rng.uniform(-0.12, 0.12)
    half_w = rng.uniform(60, 80)
    body_h = rng.uniform(80, 100)
    gap = rng.uniform(16, 24)
    phase = rng.uniform(0, body_h + gap)
    dens = rng.uniform(0.07, 0.18)
    params["spine"] = {"x": round(float(x_mid), 2), "tilt": round(float(tilt), 4),
                       "half_width": round(float(half_w), 2), "density": round(float(dens), 3)}
    xr = X / scale
    yr = Y / scale
    # coordinates along / across the spine axis (reference px)
    across = (xr - (x_mid + tilt * (yr - 256))) / np.sqrt(1 + tilt**2)
    along = yr + phase
    period = body_h + gap
    k = np.floor(along / period)
    local = along - k * period - body_h / 2  # 0 at the body centre
    # superellipse body |x/a|^4 + |y/b|^4 <= 1, soft edge
    q = (np.abs(across / half_w) ** 4 + np.abs(local / (body_h / 2)) ** 4) ** 0.25
    edge = 1.5 / half_w
    body = _sigmoid((1 - q) / edge)
    rim = np.exp(-((q - 0.97) / 0.05) ** 2)
    # pedicles: two ovals in the upper part of each body
    ped = np.zeros_like(body)
    for side in (-1, 1):
        px = across - side * half_w * 0.62
        py = local + body_h * 0.18
        ped += np.exp(-((px / (half_w * 0.18)) ** 2 + (py / (body_h * 0.22)) ** 2) ** 2)
    ped_rim = np.exp(-((np.sqrt(np.maximum(ped, 1e-6)) - 0.5) / 0.15) ** 2) * (ped > 0.05)
    spinous = np.exp(-((across / (half_w * 0.12)) ** 2 + ((local + body_h * 0.05) / (body_h * 0.3)) ** 2))
    column = np.exp(-((across / (half_w * 1.25)) ** 8))  # soft tissue of the paraspinal region
    return (dens * (body + 0.35 * rim) + 0.25 * dens * (ped_rim + 0.5 * spinous) + 0.1 * column).astype(np.float32)


def _ribs(rng, shape, scale, pad, params) -> np.ndarray:
    """Curved rib bands with cortical edges (tube footprints)."""
    hp, wp = shape
    n_ribs = int(rng.integers(4, 8))
    spacing = rng.uniform(70, 100)
    y_first = rng.uniform(-60, 40)
    curvature = rng.uniform(0.0006, 0.0016)
    slope = rng.uniform(-0.45, 0.45)
    x_apex = rng.uniform(0, 512)
    out = np.zeros(hp * wp, np.float32)
    xs = np.linspace(-120, 632, 160)
    for i in range(n_ribs):
        y0 = y_first + i * spacing + rng.normal(0, 6)
        ys = y0 + slope * (xs - 256) + curvature * (xs - x_apex) ** 2 * (1 if i % 2 == 0 else 0.6)
        r = rng.uniform(11, 17)
        pts = np.stack([xs, ys], 1) * scale + pad
        outer = tube_footprint(pts, np.full(len(pts), r * scale), shape, step=0.5)
        inner = tube_footprint(pts, np.full(len(pts), 0.72 * r * scale), shape, step=0.5)
        peak = rng.uniform(0.06, 0.14)
        norm = 1.0 / (2 * r * scale)
        out += accumulate(outer.idx, outer.thickness * norm * peak, hp * wp)
        out -= accumulate(inner.idx, inner.thickness * norm * peak * 0.55, hp * wp)
    params["ribs"] = {"count": n_ribs, "spacing": round(float(spacing), 2)}
    return out.reshape(shape)


def make_anatomy(
    rng: np.random.Generator,
    size: int,
    pad: int,
    heart_centre: Tuple[float, float],
    spine_x: float,
) -> Anatomy:
    """Random background anatomy for an (size x size) frame.

    Parameters
    ----------
    rng: the case's random generator.
    size: frame size in pixels.
    pad: canvas padding in pixels on each side.
    heart_centre: heart centre (x, y) in reference pixels.
    spine_x: spine axis x at mid-height, reference pixels (the catheter shaft runs beside it).
    """
    scale = size / 512.0
    hp = wp = size + 2 * pad
    shape = (hp, wp)
    params: Dict[str, object] = {}
    yy, xx = np.mgrid[0:hp, 0:wp].astype(np.float32)
    X = xx - pad
    Y = yy - pad

    # soft tissue: thicker towards the bottom and the midline, smooth lumps
    base = rng.uniform(2.6, 3.4)
    grad = rng.uniform(0.2, 0.6)
    soft = base + grad * (Y / size) + 0.12 * _smooth_field(rng, shape, 3)
    params["soft_tissue"] = {"base": round(float(base), 3), "gradient": round(float(grad), 3)}
    static = soft.astype(np.float32) + _spine(rng, X, Y, scale, params, spine_x)

    # heart silhouette (moves with the heart)
    hx, hy = heart_centre
    ax, ay = rng.uniform(170, 240), rng.uniform(150, 210)
    rot = rng.uniform(-0.6, 0.6)
    xr = (X / scale - hx) * np.cos(rot) + (Y / scale - hy) * np.sin(rot)
    yr = -(X / scale - hx) * np.sin(rot) + (Y / scale - hy) * np.cos(rot)
    q = np.sqrt((xr / ax) ** 2 + (yr / ay) ** 2)
    heart_d = rng.uniform(0.12, 0.25)
    heart = (heart_d * _sigmoid((1 - q) / 0.05)).astype(np.float32)
    params["heart"] = {"centre": [round(float(hx), 2), round(float(hy), 2)],
                       "axes": [round(float(ax), 2), round(float(ay), 2)], "density": round(float(heart_d), 3)}

    # lungs: everything above the diaphragm and outside the mediastinum
    dome_y = rng.uniform(360, 560)
    dome_x = rng.uniform(100, 412)
    dome_k = rng.uniform(0.0004, 0.0012)
    diaphragm_y = dome_y + dome_k * (X / scale - dome_x) ** 2
    below = _sigmoid((Y / scale - diaphragm_y) / rng.uniform(4.0, 9.0))
    liver = rng.uniform(0.3, 0.6)
    mediastinum = _sigmoid((1 - q * rng.uniform(0.75, 0.95)) / 0.12)
    lung = (1 - below) * (1 - 0.85 * mediastinum)
    lung_d = rng.uniform(0.15, 0.35)
    tex_amp = rng.uniform(0.02, 0.045)
    breathing = (
        liver * below
        - lung_d * lung
        + tex_amp * lung * _texture(rng, shape, scale)
        + 0.02 * _texture(rng, shape, scale * 4)
    ).astype(np.float32)
    breathing += _ribs(rng, shape, scale, pad, params)
    params["diaphragm"] = {"dome_y": round(float(dome_y), 2), "dome_x": round(float(dome_x), 2)}
    params["lungs"] = {"density": round(float(lung_d), 3), "texture": round(float(tex_amp), 4)}
    return Anatomy(static=static, breathing=breathing, heart=heart, params=params)
