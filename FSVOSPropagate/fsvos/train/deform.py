"""Synthetic deformation of a still image (the static-image stage of STCN/XRAVOS training).

:func:`random_deformation` draws a smooth map from output pixels to source pixels:
a random affine about the image centre (rotation +-15 deg, scale 0.9-1.1, shear
+-10 deg, shift +-4 % of the side) plus an elastic field (random displacements on a
coarse 5 x 5 grid, interpolated bicubically, amplitude ``elastic`` x image side).
:func:`deformed_triplet` applies three independent draws to one image and its labels,
which turns the image into a 3-frame "cine" of a moving, bending object.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def random_deformation(rng: np.random.Generator, shape: Tuple[int, int], elastic: float = 0.02):
    """-> (map_x, map_y) float32 (H, W): source x, y (pixels) of each output pixel, for cv2.remap."""
    import cv2

    h, w = shape
    rot = np.deg2rad(rng.uniform(-15, 15))
    scale = float(np.exp(rng.uniform(np.log(0.9), np.log(1.1))))
    shear = np.tan(np.deg2rad(rng.uniform(-10, 10)))
    shift = rng.uniform(-0.04, 0.04, size=2) * np.array([w, h])
    a = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    a = np.linalg.inv(a * scale)  # output -> source
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    dx, dy = xx - centre[0] - shift[0], yy - centre[1] - shift[1]
    map_x = a[0, 0] * dx + a[0, 1] * dy + centre[0]
    map_y = a[1, 0] * dx + a[1, 1] * dy + centre[1]
    if elastic > 0:
        amp = elastic * max(h, w)
        coarse = rng.uniform(-1, 1, size=(2, 5, 5)).astype(np.float32) * amp
        map_x = map_x + cv2.resize(coarse[0], (w, h), interpolation=cv2.INTER_CUBIC)
        map_y = map_y + cv2.resize(coarse[1], (w, h), interpolation=cv2.INTER_CUBIC)
    return map_x.astype(np.float32), map_y.astype(np.float32)


def deform(image: np.ndarray, labels: np.ndarray, maps) -> Tuple[np.ndarray, np.ndarray]:
    """image (H, W) (bilinear) and labels uint8 (H, W) (nearest) through ``maps`` -> same shapes."""
    import cv2

    mx, my = maps
    img = cv2.remap(image, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lab = cv2.remap(labels, mx, my, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    return img, lab


def deformed_triplet(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray,
                     elastic: float = 0.02) -> Tuple[np.ndarray, np.ndarray]:
    """image uint8 (H, W), labels uint8 (H, W) -> frames uint8 (3, H, W), labels uint8 (3, H, W):
    three independent random deformations of the same image."""
    out = [deform(image, labels, random_deformation(rng, image.shape, elastic)) for _ in range(3)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
