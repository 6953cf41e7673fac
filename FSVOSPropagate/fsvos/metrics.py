"""Segmentation accuracy: J (IoU), F (boundary F-measure), J&F and Dice.

J and F follow the DAVIS 2017 evaluation code
(github.com/davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py``,
``utils.py``, ``evaluation.py``) definition by definition:

* **J** = |A & B| / |A | B| per frame; a frame where both masks are empty
  scores 1 (the reference sets J = 1 wherever the union is 0).
* **F**: both masks are reduced to one-pixel boundaries with :func:`seg2bmap`
  (a pixel is boundary when it differs from its right, lower or lower-right
  neighbour; in the last row only the right neighbour counts, in the last
  column only the lower one, and the bottom-right pixel never is boundary).
  The tolerance is ``bound_th`` pixels when ``bound_th >= 1``, otherwise
  ``ceil(bound_th * sqrt(H**2 + W**2))`` pixels (6 px at 512 x 512).  Each
  boundary map is dilated (``cv2.dilate``) with the disk
  ``x**2 + y**2 <= r**2`` on the integer grid ``-r..r`` (skimage's
  ``disk(r)``); precision = matched predicted boundary pixels / predicted
  boundary pixels, recall = matched true boundary pixels / true boundary
  pixels.  No boundary in either -> P = R = 1; only the prediction has none
  -> P = 1, R = 0; only the truth has none -> P = 0, R = 1; F = 2PR / (P + R),
  0 when P + R = 0.
* Per object, J and F are averaged over the evaluated frames (``nanmean``);
  the overall J and F are the means over all objects of all cines, and
  J&F = (J + F) / 2.  The reference drops the first (annotated) and the last
  frame of each DAVIS sequence; here the caller names the frames to exclude
  (the support frames).
* Recall (fraction of frames > 0.5) and decay (mean of the first quarter
  minus mean of the last quarter of the frames) as in ``db_statistics``; the
  reference casts the bin indices to uint8, which only matters past 256 frames
  (here they stay integers).

Dice = 2 |A & B| / (|A| + |B|), 1 when both are empty (not part of DAVIS).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import cv2
import numpy as np

__all__ = [
    "db_eval_iou",
    "db_eval_boundary",
    "f_measure",
    "seg2bmap",
    "disk",
    "boundary_tolerance",
    "dice",
    "db_statistics",
    "evaluate_sequence",
    "summarize",
]


def _check_pair(a: np.ndarray, b: np.ndarray, void: Optional[np.ndarray]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"annotation {a.shape} and segmentation {b.shape} shapes differ")
    if void is not None and void.shape != a.shape:
        raise ValueError(f"void {void.shape} and annotation {a.shape} shapes differ")


def db_eval_iou(
    annotation: np.ndarray, segmentation: np.ndarray, void: Optional[np.ndarray] = None
):
    """Region similarity J (Jaccard index) of binary masks.

    Parameters
    ----------
    annotation, segmentation:
        Binary masks (any dtype, non-zero = inside) of shape (H, W) or (T, H, W).
    void:
        Optional mask of the same shape; its pixels are ignored.

    Returns
    -------
    float for (H, W) input, float64 array (T,) for (T, H, W) input.  1 where
    both masks are empty (outside ``void``).
    """
    a = np.asarray(annotation).astype(bool)
    s = np.asarray(segmentation).astype(bool)
    _check_pair(a, s, void)
    keep = np.ones_like(a) if void is None else ~np.asarray(void).astype(bool)
    inter = np.sum(a & s & keep, axis=(-2, -1))
    union = np.sum((a | s) & keep, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(j) if j.ndim == 0 else j.astype(np.float64)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask, as DAVIS's ``_seg2bmap``.

    Parameters
    ----------
    seg:
        (H, W) mask, non-zero = inside.

    Returns
    -------
    bool (H, W): True where the pixel differs from its east, south or
    south-east neighbour (last row: east only; last column: south only;
    bottom-right pixel: never).  Boundaries sit half a pixel towards the
    origin from the true segment edge; the image border is not a boundary.
    """
    m = np.asarray(seg).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"seg2bmap expects a 2-D mask, got shape {m.shape}")
    east = np.zeros_like(m)
    south = np.zeros_like(m)
    south_east = np.zeros_like(m)
    east[:, :-1] = m[:, 1:]
    south[:-1, :] = m[1:, :]
    south_east[:-1, :-1] = m[1:, 1:]
    b = (m ^ east) | (m ^ south) | (m ^ south_east)
    b[-1, :] = m[-1, :] ^ east[-1, :]
    b[:, -1] = m[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: float) -> np.ndarray:
    """uint8 structuring element ``x**2 + y**2 <= radius**2`` on ``-r..r`` (skimage ``disk``).

    ``radius`` may be a float; the grid is ``arange(-radius, radius + 1)``,
    as in skimage, so a non-integer radius gives a grid offset accordingly.
    """
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    return ((x**2 + y**2) <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: Sequence[int], bound_th: float = 0.008) -> float:
    """Boundary tolerance in pixels for an (H, W) image: ``bound_th`` if >= 1, else ``ceil(bound_th * diagonal)``."""
    if bound_th >= 1:
        return float(bound_th)
    return float(np.ceil(bound_th * np.linalg.norm(shape[-2:])))


def f_measure(
    segmentation: np.ndarray,
    annotation: np.ndarray,
    void: Optional[np.ndarray] = None,
    bound_th: float = 0.008,
) -> float:
    """Boundary F-measure of one (H, W) frame (DAVIS ``f_measure``; prediction first)."""
    seg = np.asarray(segmentation).astype(bool)
    gt = np.asarray(annotation).astype(bool)
    _check_pair(gt, seg, void)
    if void is not None:
        keep = ~np.asarray(void).astype(bool)
        seg, gt = seg & keep, gt & keep
    radius = boundary_tolerance(seg.shape, bound_th)
    kernel = disk(radius)
    fg_b = seg2bmap(seg)
    gt_b = seg2bmap(gt)
    n_fg = int(fg_b.sum())
    n_gt = int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
        precision = float(np.sum(fg_b & gt_dil)) / n_fg
        recall = float(np.sum(gt_b & fg_dil)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void: Optional[np.ndarray] = None,
    bound_th: float = 0.008,
):
    """Boundary F-measure of binary masks, DAVIS 2017 definition.

    Parameters
    ----------
    annotation, segmentation:
        Binary masks (H, W) or (T, H, W), non-zero = inside.
    void:
        Optional ignore mask of the same shape.
    bound_th:
        Tolerance: pixels if >= 1, else a fraction of the image diagonal
        (rounded up).

    Returns
    -------
    float for (H, W), float64 array (T,) for (T, H, W).
    """
    a = np.asarray(annotation)
    s = np.asarray(segmentation)
    _check_pair(a, s, void)
    if a.ndim == 2:
        return f_measure(s, a, void, bound_th)
    if a.ndim == 3:
        return np.array(
            [
                f_measure(s[t], a[t], None if void is None else void[t], bound_th)
                for t in range(a.shape[0])
            ],
            dtype=np.float64,
        )
    raise ValueError(f"db_eval_boundary supports (H, W) or (T, H, W) masks, got {a.shape}")


def dice(annotation: np.ndarray, segmentation: np.ndarray):
    """Dice coefficient 2|A&B| / (|A|+|B|) of (H, W) or (T, H, W) binary masks; 1 when both are empty."""
    a = np.asarray(annotation).astype(bool)
    s = np.asarray(segmentation).astype(bool)
    _check_pair(a, s, None)
    inter = np.sum(a & s, axis=(-2, -1))
    total = np.sum(a, axis=(-2, -1)) + np.sum(s, axis=(-2, -1))
    d = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return float(d) if d.ndim == 0 else d.astype(np.float64)


def db_statistics(per_frame: Sequence[float]) -> Dict[str, float]:
    """Mean, recall (fraction > 0.5) and decay of per-frame values, as DAVIS ``db_statistics``.

    Returns a dict ``{"mean", "recall", "decay"}`` (NaN values ignored).
    """
    v = np.asarray(per_frame, dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "recall": math.nan, "decay": math.nan}
    mean = float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan
    recall = float(np.nanmean(v > 0.5))
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
    with np.errstate(invalid="ignore"):
        first = np.nanmean(bins[0]) if np.any(~np.isnan(bins[0])) else math.nan
        last = np.nanmean(bins[3]) if np.any(~np.isnan(bins[3])) else math.nan
    return {"mean": mean, "recall": recall, "decay": float(first - last)}


def evaluate_sequence(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    object_ids: Iterable[int],
    exclude_frames: Iterable[int] = (),
    bound_th: float = 0.008,
) -> Dict[int, Dict[str, object]]:
    """Per-object J, F, J&F and Dice of one cine.

    Parameters
    ----------
    pred_labels, true_labels:
        Integer label maps (T, H, W), 0 = background, i = object i.  Labels in
        ``pred_labels`` that are not in ``object_ids`` are ignored.
    object_ids:
        The objects to score (e.g. the labels of the support frame).
    exclude_frames:
        Frame indices left out of the means (the support frames); negative
        indices count from the end.
    bound_th:
        Boundary tolerance (see :func:`db_eval_boundary`).

    Returns
    -------
    ``{object_id: {"J", "F", "JF", "Dice": float means over frames,
    "J_recall", "J_decay", "F_recall", "F_decay": float,
    "J_per_frame", "F_per_frame", "Dice_per_frame": list of float,
    "frames": list of int (the evaluated frame indices)}}``.

    Raises
    ------
    ValueError
        Shapes differ, inputs are not (T, H, W), or no frame is left.
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    if pred.ndim != 3 or pred.shape != true.shape:
        raise ValueError(
            f"pred_labels {pred.shape} and true_labels {true.shape} must be equal (T, H, W) shapes"
        )
    n = pred.shape[0]
    excluded = {int(t) % n for t in exclude_frames if -n <= int(t) < n}
    frames = [t for t in range(n) if t not in excluded]
    if not frames:
        raise ValueError("no frame left to evaluate after excluding the support frames")
    p = pred[frames]
    g = true[frames]
    out: Dict[int, Dict[str, object]] = {}
    for obj in object_ids:
        obj = int(obj)
        pm = p == obj
        gm = g == obj
        j = np.atleast_1d(db_eval_iou(gm, pm))
        f = np.atleast_1d(db_eval_boundary(gm, pm, bound_th=bound_th))
        d = np.atleast_1d(dice(gm, pm))
        js, fs = db_statistics(j), db_statistics(f)
        out[obj] = {
            "J": js["mean"],
            "F": fs["mean"],
            "JF": (js["mean"] + fs["mean"]) / 2.0,
            "Dice": float(np.mean(d)),
            "J_recall": js["recall"],
            "J_decay": js["decay"],
            "F_recall": fs["recall"],
            "F_decay": fs["decay"],
            "J_per_frame": j.tolist(),
            "F_per_frame": f.tolist(),
            "Dice_per_frame": d.tolist(),
            "frames": frames,
        }
    return out


def _flatten(results: Iterable) -> List[Mapping[str, object]]:
    flat: List[Mapping[str, object]] = []
    for item in results:
        if isinstance(item, Mapping) and "J" in item and "F" in item:
            flat.append(item)
        elif isinstance(item, Mapping):
            flat.extend(_flatten(item.values()))
        else:
            raise TypeError(f"expected per-object result dicts, got {type(item).__name__}")
    return flat


def summarize(results: Iterable) -> Dict[str, float]:
    """Overall scores: the mean over all objects of all cines.

    Parameters
    ----------
    results:
        Per-object result dicts (each with "J", "F" and optionally "Dice"),
        or outputs of :func:`evaluate_sequence` (``{object_id: dict}``), or a
        mix; nested containers are flattened.

    Returns
    -------
    ``{"J", "F", "JF", "Dice": float, "n_objects": int}`` with
    JF = (J + F) / 2 as in the DAVIS 2017 table.  NaN when there is no object.
    """
    flat = _flatten(results)
    if not flat:
        return {"J": math.nan, "F": math.nan, "JF": math.nan, "Dice": math.nan, "n_objects": 0}
    j = float(np.mean([float(r["J"]) for r in flat]))
    f = float(np.mean([float(r["F"]) for r in flat]))
    dices = [float(r["Dice"]) for r in flat if "Dice" in r]
    return {
        "J": j,
        "F": f,
        "JF": (j + f) / 2.0,
        "Dice": float(np.mean(dices)) if dices else math.nan,
        "n_objects": len(flat),
    }
