"""Contrast dynamics: wash-in along the tree, full opacification, wash-out.

The relative iodine concentration c(s, t) in [0, 1] (1 = undiluted bolus)
depends on the path length s from the ostium (reference pixels) and the
frame index t:

* wash-in: the bolus front leaves the catheter tip at frame ``t_inject`` and
  reaches the most distal point at ``t_inject + fill_frames``; behind the
  front the concentration rises smoothly over ``rise_frames``;
* plateau: full opacification until the injection stops at ``t_stop``;
* wash-out: unopacified blood enters at the ostium, so the proximal tree
  clears first; at path length s the concentration decays exponentially
  (time constant ``washout_tau`` frames) from ``t_stop + s / washout_speed``.

A pixel is labelled vessel when it lies in a lumen where the contrast is
visible: the iodine attenuation across the vessel there, ``mu_iodine x
c(s, t) x lumen diameter``, is at least :data:`VISIBLE_ATTENUATION` (0.05,
i.e. the primary beam is dimmed by at least ~5 %).  Below that an annotator
cannot see the vessel in the frame either.  Wide vessels thus stay visible
down to lower concentrations than thin ones (at the usual iodine density, a
0.4 mm twig needs about half of full opacification, a 3 mm trunk a few %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: vessel label threshold on the iodine attenuation across the lumen (mu x c x diameter)
VISIBLE_ATTENUATION = 0.05


@dataclass
class ContrastTiming:
    """Timing of one injection, in frames (floats), and the longest path (reference px)."""

    t_inject: float
    fill_frames: float
    rise_frames: float
    t_stop: float
    washout_speed: float  # reference px per frame
    washout_tau: float
    s_max: float

    def as_dict(self) -> dict:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def sample_timing(rng: np.random.Generator, n_frames: int, s_max: float) -> ContrastTiming:
    """Random injection timing for a cine of ``n_frames`` frames.

    Guarantees: frame 0 has no visible contrast (t_inject >= 1.5), and the
    whole tree is fully opacified for at least one frame before wash-out
    starts (t_inject + fill + rise < t_stop).
    """
    t_inject = max(1.5, rng.uniform(0.04, 0.14) * n_frames)
    fill = max(2.0, rng.uniform(0.14, 0.28) * n_frames)
    rise = max(1.0, rng.uniform(0.03, 0.07) * n_frames)
    earliest_stop = t_inject + fill + rise + max(1.0, 0.08 * n_frames)
    t_stop = max(earliest_stop, rng.uniform(0.55, 0.8) * n_frames)
    washout_speed = s_max / max(1.0, rng.uniform(0.15, 0.4) * n_frames)
    tau = max(1.0, rng.uniform(0.06, 0.16) * n_frames)
    return ContrastTiming(t_inject, fill, rise, t_stop, washout_speed, tau, s_max)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def concentration(timing: ContrastTiming, s: np.ndarray, t: float) -> np.ndarray:
    """Relative concentration (float32, same shape as ``s``) at path lengths ``s`` at frame ``t``."""
    s = np.asarray(s, dtype=np.float32)
    arrival = timing.t_inject + (s / max(timing.s_max, 1e-6)) * timing.fill_frames
    wash_in = _smoothstep((t - arrival) / timing.rise_frames)
    clear_start = timing.t_stop + s / timing.washout_speed
    wash_out = np.exp(-np.maximum(t - clear_start, 0.0) / timing.washout_tau)
    return (wash_in * wash_out).astype(np.float32)


def visible(timing: ContrastTiming, s: np.ndarray, peak_attenuation: np.ndarray, t: float) -> np.ndarray:
    """bool mask: contrast visible at path lengths ``s`` with full-concentration attenuation ``peak_attenuation``."""
    return concentration(timing, s, t) * peak_attenuation >= VISIBLE_ATTENUATION


def catheter_concentration(timing: ContrastTiming, t: float) -> float:
    """Concentration inside the catheter lumen at frame t (full while injecting)."""
    on = _smoothstep(np.array((t - timing.t_inject + 1.0) / 1.0))
    off = np.exp(-max(t - timing.t_stop, 0.0) / max(0.5 * timing.washout_tau, 0.5))
    return float(on * off)
