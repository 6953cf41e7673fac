"""X-ray image formation: attenuation -> detector counts -> displayed 8-bit frame.

Per frame, from the total line integral mu(x) (dimensionless):

1. primary photons (Beer-Lambert): ``N = N0 * exp(-mu)``;
2. scatter: a veiling glare proportional to a heavily blurred primary
   (scatter-to-primary ratio ``spr``, after the anti-scatter grid);
3. quantum noise: Poisson(N + scatter), the counts per pixel being set by
   the dose (``N0``);
4. detector blur: Gaussian point spread (scintillator light spread), which
   also correlates the noise, plus a little electronic (Gaussian) noise;
5. logarithmic transfer: ``log(counts)``.

The cine is then windowed to 8 bits with one window for all frames (robust
percentiles of the log signal), with mild unsharp masking as clinical
systems apply: high attenuation (contrast-filled vessels, bone, devices)
is dark, the lungs are light.
"""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np


def detect(
    mu: np.ndarray,
    n0: float,
    rng: np.random.Generator,
    *,
    spr: float,
    blur_sigma_px: float,
    electronic_sigma: float,
) -> np.ndarray:
    """Noisy detector signal of one frame, as log counts.

    Parameters
    ----------
    mu: float32 (H, W) line integral of the attenuation coefficient.
    n0: incident photons per pixel (unattenuated).
    rng: random generator (quantum and electronic noise).
    spr: scatter-to-primary ratio at the mean primary level.
    blur_sigma_px: detector point-spread sigma in pixels.
    electronic_sigma: additive Gaussian noise, in counts.

    Returns
    -------
    float32 (H, W) ``log(max(counts, 1))``.
    """
    primary = n0 * np.exp(-mu.astype(np.float32))
    h, w = primary.shape
    small = cv2.resize(primary, (max(w // 16, 1), max(h // 16, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), max(h / 16 / 6, 0.5))
    scatter = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) * spr
    counts = rng.poisson(primary + scatter).astype(np.float32)
    if blur_sigma_px > 0:
        counts = cv2.GaussianBlur(counts, (0, 0), blur_sigma_px)
    if electronic_sigma > 0:
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * electronic_sigma
    return np.log(np.maximum(counts, 1.0))


def window_cine(log_frames: np.ndarray, *, unsharp: float = 0.6, unsharp_sigma_px: float = 4.0,
                percentiles: Tuple[float, float] = (0.2, 99.5), gamma: float = 1.4) -> np.ndarray:
    """Window a (T, H, W) float32 log-signal cine to uint8 with one window for all frames.

    Unsharp masking ``x + unsharp * (x - blur(x))`` is applied per frame first.
    Percentiles are taken on a regular subsample of the cine.
    """
    t, h, w = log_frames.shape
    out = np.empty((t, h, w), np.float32)
    for i in range(t):
        f = log_frames[i]
        if unsharp > 0:
            f = f + unsharp * (f - cv2.GaussianBlur(f, (0, 0), unsharp_sigma_px))
        out[i] = f
    sample = out[:: max(t // 8, 1), ::4, ::4]
    lo, hi = np.percentile(sample, percentiles)
    # quantise to 4096 levels, then one lookup table applies the window and the gamma
    levels = 4095
    lut = np.round((np.arange(levels + 1) / levels) ** gamma * 255.0).astype(np.uint8)
    out -= lo
    out *= levels / max(hi - lo, 1e-6)
    np.clip(out, 0, levels, out=out)
    return lut[out.astype(np.uint16)]
