"""Geometry of a coronary-like vessel tree, projected onto the image plane.

All lengths are in *reference pixels*: pixels of a 512 x 512 image (multiply
by ``size / 512`` for another size).  A tree is a list of :class:`Branch`
centrelines sampled every :data:`STEP` reference pixels, with a radius per
sample that tapers from about 6 px (left main / proximal RCA) to 0.7 px
(distal twigs), and the path length from the ostium (where the catheter tip
sits) used by the contrast dynamics.

Two templates, as seen in standard projections:

* ``left``: short left main splitting into LAD (long, towards the apex, with
  diagonals on one side and short septals on the other) and circumflex
  (curving, with obtuse marginals), optionally a ramus intermedius;
* ``right``: RCA, a long C-shaped curve with a conus branch, right
  ventricular branches and a distal split into PDA and posterolateral branch.

Headings follow a smooth random curvature plus tortuosity; a fraction of the
side branches curl back over their parent, so that vessels cross in
projection (the 3-D tree wraps around the heart).  Side branches take a
radius ratio of 0.45-0.75 of the parent at the branch point (Murray-like).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

#: centreline sample spacing, reference pixels
STEP = 0.5
#: radius limits in reference pixels (the issue's 0.7-6 px at 512)
R_MIN, R_MAX = 0.7, 6.0


@dataclass
class Branch:
    """One vessel segment of the tree (reference pixels).

    Attributes
    ----------
    name: e.g. "LAD", "D1", "OM2", "RCA".
    points: float64 (N, 2) centreline x, y, spacing STEP.
    radii: float64 (N,) lumen radius per point.
    s0: path length from the ostium at points[0].
    parent: index of the parent branch in the tree list, -1 for a root.
    parent_index: sample index in the parent where this branch starts.
    depth: 0 for main vessels.
    """

    name: str
    points: np.ndarray
    radii: np.ndarray
    s0: float
    parent: int = -1
    parent_index: int = 0
    depth: int = 0

    @property
    def s(self) -> np.ndarray:
        """float64 (N,) path length from the ostium per point."""
        return self.s0 + STEP * np.arange(len(self.points))


@dataclass
class VesselTree:
    """A projected coronary tree (reference pixels)."""

    kind: str
    ostium: np.ndarray
    branches: List[Branch] = field(default_factory=list)

    @property
    def max_path_length(self) -> float:
        return float(max(b.s[-1] for b in self.branches))

    def path_to(self, index: int) -> Branch:
        """The path from the ostium to the end of branch ``index`` as one centreline."""
        chain = []
        i, stop = index, None
        while i >= 0:
            b = self.branches[i]
            chain.append((b, stop))
            stop, i = b.parent_index + 1, b.parent
        pts, rad = [], []
        for b, end in reversed(chain):
            pts.append(b.points[:end])
            rad.append(b.radii[:end])
        return Branch(
            name="path:" + self.branches[index].name,
            points=np.concatenate(pts),
            radii=np.concatenate(rad),
            s0=0.0,
        )


def _smooth_noise(rng: np.random.Generator, n: int, n_modes: int, amplitude: float, min_wavelength: float) -> np.ndarray:
    """Sum of random sinusoids over n samples (wavelength >= min_wavelength samples)."""
    u = np.arange(n, dtype=np.float64)
    out = np.zeros(n)
    for _ in range(n_modes):
        lam = rng.uniform(min_wavelength, 4 * min_wavelength)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * u / lam + rng.uniform(0, 2 * np.pi))
    return amplitude * out / max(n_modes, 1)


def _grow(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    r0: float,
    r1: float,
    curvature: float,
    tortuosity: float,
    taper: float = 1.0,
) -> tuple:
    """Centreline (N, 2) and radii (N,) of one branch.

    ``curvature`` is the mean turn rate (rad per reference px), ``tortuosity``
    the amplitude (rad) of the wavy part of the heading.
    """
    n = max(int(length / STEP), 4)
    u = np.arange(n) * STEP
    heading_u = (
        heading
        + curvature * u
        + _smooth_noise(rng, n, 3, tortuosity, 60 / STEP)
        + _smooth_noise(rng, n, 2, 0.5 * tortuosity, 15 / STEP)
    )
    step = np.stack([np.cos(heading_u), np.sin(heading_u)], axis=1) * STEP
    pts = start + np.concatenate([[[0.0, 0.0]], np.cumsum(step[:-1], axis=0)])
    frac = u / max(u[-1], 1e-9)
    radii = r0 + (r1 - r0) * frac**taper
    radii *= 1.0 + _smooth_noise(rng, n, 2, 0.06, 40 / STEP)  # mild calibre variation
    return pts, np.clip(radii, R_MIN, R_MAX)


def _heading_at(points: np.ndarray, i: int) -> float:
    a = points[max(i - 4, 0)]
    b = points[min(i + 4, len(points) - 1)]
    return float(np.arctan2(b[1] - a[1], b[0] - a[0]))


def _add_side_branches(
    rng: np.random.Generator,
    tree: VesselTree,
    parent: int,
    count: int,
    prefix: str,
    side: Optional[float],
    angle_range=(0.5, 1.2),
    length_range=(0.25, 0.6),
    ratio_range=(0.55, 0.85),
    span=(0.12, 0.85),
    max_depth: int = 2,
    curl_prob: float = 0.25,
) -> None:
    """Attach ``count`` side branches to ``tree.branches[parent]`` (recursively, to ``max_depth``)."""
    par = tree.branches[parent]
    n = len(par.points)
    if count <= 0 or n < 20:
        return
    positions = np.sort(rng.uniform(span[0], span[1], size=count))
    for j, pos in enumerate(positions):
        i = int(pos * (n - 1))
        r_parent = par.radii[i]
        r0 = float(np.clip(r_parent * rng.uniform(*ratio_range), R_MIN + 0.2, R_MAX))
        if r0 <= R_MIN + 0.25:
            continue
        sgn = side if side is not None else rng.choice([-1.0, 1.0])
        heading = _heading_at(par.points, i) + sgn * rng.uniform(*angle_range)
        remaining = (n - i) * STEP
        length = max(30.0, rng.uniform(*length_range) * remaining + rng.uniform(20, 80) * r0 / 3)
        curl = rng.random() < curl_prob
        curvature = (-sgn * rng.uniform(0.006, 0.012)) if curl else rng.normal(0, 0.002)
        # start inside the parent lumen (flat cap there), so the branch joins smoothly
        start = par.points[i] + 0.5 * r_parent * np.array([np.cos(heading), np.sin(heading)])
        pts, rad = _grow(rng, start, heading, length, r0, max(R_MIN, r0 * rng.uniform(0.3, 0.55)),
                         curvature, rng.uniform(0.08, 0.25), taper=rng.uniform(1.0, 1.5))
        tree.branches.append(
            Branch(f"{prefix}{j + 1}", pts, rad, s0=float(par.s[i]), parent=parent, parent_index=i,
                   depth=par.depth + 1)
        )
        child = len(tree.branches) - 1
        if par.depth + 1 < max_depth and r0 > 1.6:
            _add_side_branches(rng, tree, child, int(rng.integers(0, 3)), f"{prefix}{j + 1}.", None,
                               angle_range=(0.4, 1.0), length_range=(0.3, 0.7), max_depth=max_depth,
                               curl_prob=curl_prob * 0.5)


def _left_tree(rng: np.random.Generator, ostium: np.ndarray, mirror: float) -> VesselTree:
    tree = VesselTree("left", ostium)
    lm_heading = np.deg2rad(rng.uniform(40, 110)) if mirror > 0 else np.deg2rad(180 - rng.uniform(40, 110))
    lm_len = rng.uniform(18, 40)
    r_lm = rng.uniform(4.6, R_MAX)
    pts, rad = _grow(rng, ostium, lm_heading, lm_len, r_lm, r_lm * 0.93, 0.0, 0.03)
    tree.branches.append(Branch("LM", pts, rad, 0.0))
    end = pts[-1]
    s_end = float(tree.branches[0].s[-1])
    lm_idx = len(pts) - 1
    split = rng.uniform(0.45, 0.8)
    lad_heading = lm_heading + mirror * split
    lcx_heading = lm_heading - mirror * rng.uniform(0.6, 1.1)
    # LAD: long, towards the apex
    pts, rad = _grow(rng, end, lad_heading, rng.uniform(330, 470), r_lm * rng.uniform(0.72, 0.85),
                     rng.uniform(R_MIN, 1.0), mirror * rng.normal(0.0005, 0.0012), rng.uniform(0.12, 0.3),
                     taper=rng.uniform(1.1, 1.6))
    tree.branches.append(Branch("LAD", pts, rad, s_end, parent=0, parent_index=lm_idx, depth=0))
    lad = len(tree.branches) - 1
    # LCx: curving around the AV groove
    pts, rad = _grow(rng, end, lcx_heading, rng.uniform(230, 360), r_lm * rng.uniform(0.62, 0.75),
                     rng.uniform(R_MIN, 1.1), mirror * rng.uniform(0.002, 0.0055), rng.uniform(0.1, 0.25),
                     taper=rng.uniform(1.1, 1.6))
    tree.branches.append(Branch("LCX", pts, rad, s_end, parent=0, parent_index=lm_idx, depth=0))
    lcx = len(tree.branches) - 1
    if rng.random() < 0.3:
        pts, rad = _grow(rng, end, 0.5 * (lad_heading + lcx_heading), rng.uniform(120, 220),
                         r_lm * rng.uniform(0.45, 0.55), R_MIN, rng.normal(0, 0.002), 0.2)
        tree.branches.append(Branch("RI", pts, rad, s_end, parent=0, parent_index=lm_idx, depth=1))
    _add_side_branches(rng, tree, lad, int(rng.integers(2, 6)), "D", -mirror, angle_range=(0.45, 0.9))
    _add_side_branches(rng, tree, lad, int(rng.integers(1, 4)), "S", mirror, angle_range=(1.0, 1.5),
                       length_range=(0.1, 0.2), ratio_range=(0.3, 0.45), max_depth=1)
    _add_side_branches(rng, tree, lcx, int(rng.integers(2, 5)), "OM", mirror, angle_range=(0.5, 1.0),
                       span=(0.2, 0.9))
    return tree


def _right_tree(rng: np.random.Generator, ostium: np.ndarray, mirror: float) -> VesselTree:
    tree = VesselTree("right", ostium)
    heading = np.deg2rad(rng.uniform(-10, 40)) if mirror > 0 else np.deg2rad(180 - rng.uniform(-10, 40))
    length = rng.uniform(430, 560)
    turn = rng.uniform(2.2, 3.0)  # total turn of the C, radians
    r0 = rng.uniform(4.3, 5.6)
    pts, rad = _grow(rng, ostium, heading, length, r0, rng.uniform(1.8, 2.4), mirror * turn / length,
                     rng.uniform(0.1, 0.25), taper=rng.uniform(1.1, 1.5))
    tree.branches.append(Branch("RCA", pts, rad, 0.0))
    rca = 0
    n = len(pts)
    # distal split: PDA and posterolateral
    for name, dh, ln in (("PDA", 0.45, (120, 200)), ("PL", -0.5, (90, 170))):
        i = n - 1
        h = _heading_at(pts, i) + mirror * dh
        p2, r2 = _grow(rng, pts[i], h, rng.uniform(*ln), rad[i] * rng.uniform(0.7, 0.85), R_MIN,
                       rng.normal(0, 0.003), 0.2)
        tree.branches.append(Branch(name, p2, r2, float(tree.branches[rca].s[i]), parent=rca,
                                    parent_index=i, depth=1))
    _add_side_branches(rng, tree, rca, 1, "CONUS", -mirror, angle_range=(0.7, 1.2), span=(0.03, 0.08),
                       length_range=(0.1, 0.18), ratio_range=(0.3, 0.4), max_depth=1)
    _add_side_branches(rng, tree, rca, int(rng.integers(3, 6)), "RV", -mirror, angle_range=(0.7, 1.3),
                       span=(0.2, 0.8), length_range=(0.2, 0.4))
    return tree


def make_tree(rng: np.random.Generator, kind: Optional[str] = None) -> VesselTree:
    """Random coronary tree in reference pixels (512 x 512 frame).

    Parameters
    ----------
    rng: the case's random generator.
    kind: "left", "right" or None (left 70 %, right 30 %).
    """
    if kind is None:
        kind = "left" if rng.random() < 0.7 else "right"
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "left":
        ostium = np.array([256 + mirror * -rng.uniform(20, 110), rng.uniform(70, 170)])
        return _left_tree(rng, ostium, mirror)
    ostium = np.array([256 + mirror * -rng.uniform(60, 150), rng.uniform(60, 150)])
    return _right_tree(rng, ostium, mirror)
