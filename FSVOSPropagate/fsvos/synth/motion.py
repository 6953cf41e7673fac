"""Cardiac and respiratory motion as per-frame displacement fields.

Cardiac motion is periodic and non-rigid.  With w(t) in [0, 1] the
contraction state (0 = end-diastole, 1 = end-systole; systole takes ~35 % of
the beat), the displacement of a point x of the heart is

    u(x, t) = env(x) * [ -a w (x - c) + (R(b w) - I)(x - c) + w d ]
              + w(t - lag) * sum_m A_m sin(k_m . x + phi_m)

with c the heart centre, env a wide Gaussian (motion fades away from the
heart), a the contraction, b the twist angle, d a systolic shift, and a few
smooth random modes (their own phase lag makes the motion non-separable).
Breathing adds a slow periodic drift b(t) (mostly cranio-caudal) to the
heart and the ribs/diaphragm; the spine moves with a small fraction of it.

Fields are evaluated on a coarse grid and resized (bicubic) to the frame:
they are smooth by construction.  Lengths are in pixels of the output size;
the parameters are drawn in reference pixels (512 frame) and scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import cv2
import numpy as np


@dataclass
class MotionParams:
    """Parameters of the motion of one case (reference pixels, frames)."""

    beat_frames: float          # frames per heart beat
    beat_phase: float           # cycle fraction at frame 0
    centre: Tuple[float, float]  # heart centre x, y
    envelope_sigma: float       # heart motion envelope, reference px
    contraction: float          # fractional shrink at end-systole
    twist: float                # radians at end-systole
    shift: Tuple[float, float]  # systolic shift, reference px
    modes: List[Tuple[float, float, float, float, float, float]] = field(default_factory=list)
    # (kx, ky, phase, amp_x, amp_y, lag) per random mode
    breath_frames: float = 60.0
    breath_phase: float = 0.0
    breath_amp: Tuple[float, float] = (0.0, 0.0)
    drift: Tuple[float, float] = (0.0, 0.0)  # reference px per frame
    spine_fraction: float = 0.15

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["modes"] = [list(map(float, m)) for m in self.modes]
        return {k: (list(map(float, v)) if isinstance(v, tuple) else v) for k, v in d.items()}


def sample_motion(rng: np.random.Generator, frame_time_ms: float, centre: Tuple[float, float]) -> MotionParams:
    """Random cardiac/breathing motion for a cine with the given frame time."""
    heart_rate = rng.uniform(55, 105)  # beats per minute
    beat_frames = 60000.0 / heart_rate / frame_time_ms
    breath_s = rng.uniform(3.0, 5.5)
    held = rng.random() < 0.4  # breath-hold: only a slow drift
    amp_y = 0.0 if held else rng.uniform(3, 12)
    modes = []
    for _ in range(3):
        wavelength = rng.uniform(250, 700)
        ang = rng.uniform(0, 2 * np.pi)
        k = 2 * np.pi / wavelength
        modes.append((k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 2 * np.pi),
                      rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(0.0, 0.15)))
    return MotionParams(
        beat_frames=float(beat_frames),
        beat_phase=float(rng.uniform(0, 1)),
        centre=(float(centre[0]), float(centre[1])),
        envelope_sigma=float(rng.uniform(200, 300)),
        contraction=float(rng.uniform(0.06, 0.12)),
        twist=float(rng.uniform(0.03, 0.08) * rng.choice([-1, 1])),
        shift=(float(rng.uniform(-6, 6)), float(rng.uniform(-8, 2))),
        modes=modes,
        breath_frames=float(breath_s * 1000.0 / frame_time_ms),
        breath_phase=float(rng.uniform(0, 2 * np.pi)),
        breath_amp=(float(rng.uniform(-2, 2) if not held else 0.0), float(amp_y)),
        drift=(float(rng.normal(0, 0.05)), float(rng.normal(0, 0.08))),
        spine_fraction=float(rng.uniform(0.05, 0.25)),
    )


def contraction_state(p: MotionParams, t: float) -> float:
    """w(t) in [0, 1]: 0 at end-diastole, 1 at end-systole (systole = 35 % of the beat)."""
    f = (t / p.beat_frames + p.beat_phase) % 1.0
    if f < 0.35:
        return 0.5 * (1 - np.cos(np.pi * f / 0.35))
    return 0.5 * (1 + np.cos(np.pi * (f - 0.35) / 0.65))


def breathing_shift(p: MotionParams, t: float, scale: float) -> np.ndarray:
    """Breathing + drift displacement (x, y) in output pixels at frame t."""
    ph = np.sin(2 * np.pi * t / p.breath_frames + p.breath_phase)
    return scale * (np.array(p.breath_amp) * ph + np.array(p.drift) * t)


def cardiac_field(p: MotionParams, t: float, shape: Tuple[int, int], scale: float, grid: int = 24) -> np.ndarray:
    """Cardiac displacement field (H, W, 2) float32 (dx, dy) in output pixels at frame t.

    ``scale`` = output pixels per reference pixel (size / 512).
    """
    h, w = shape
    ys = np.linspace(0, h - 1, grid) / scale
    xs = np.linspace(0, w - 1, grid) / scale
    X, Y = np.meshgrid(xs, ys)
    cx, cy = p.centre
    rx, ry = X - cx, Y - cy
    env = np.exp(-(rx**2 + ry**2) / (2 * p.envelope_sigma**2))
    wt = contraction_state(p, t)
    ang = p.twist * wt
    ca, sa = np.cos(ang), np.sin(ang)
    ux = env * (-p.contraction * wt * rx + (ca - 1) * rx - sa * ry + wt * p.shift[0])
    uy = env * (-p.contraction * wt * ry + sa * rx + (ca - 1) * ry + wt * p.shift[1])
    for kx, ky, ph, ax, ay, lag in p.modes:
        wl = contraction_state(p, t - lag * p.beat_frames)
        s = np.sin(kx * X + ky * Y + ph) * wl
        ux = ux + ax * s
        uy = uy + ay * s
    coarse = np.stack([ux, uy], axis=-1).astype(np.float32) * scale
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
