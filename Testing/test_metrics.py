"""DAVIS-2017 J / F / J&F and Dice: known answers on hand-made masks and an
independent re-statement of the reference definitions
(davisvideochallenge/davis2017-evaluation, davis2017/metrics.py and utils.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from fsvos.metrics import (
    boundary_tolerance,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    dice,
    disk,
    evaluate_sequence,
    seg2bmap,
    summarize,
)


def square(shape, y0, x0, h, w):
    m = np.zeros(shape, np.uint8)
    m[y0:y0 + h, x0:x0 + w] = 1
    return m


# ---------------------------------------------------------------- known answers

def test_identical_masks_score_one():
    a = square((64, 64), 10, 12, 20, 15)
    assert db_eval_iou(a, a) == 1.0
    assert db_eval_boundary(a, a) == 1.0
    assert dice(a, a) == 1.0


def test_disjoint_masks_score_zero():
    a = square((64, 64), 2, 2, 10, 10)
    b = square((64, 64), 40, 40, 10, 10)
    assert db_eval_iou(a, b) == 0.0
    assert db_eval_boundary(a, b) == 0.0
    assert dice(a, b) == 0.0


def test_empty_against_empty_is_one_and_against_object_is_zero():
    e = np.zeros((32, 40), np.uint8)
    a = square((32, 40), 5, 5, 6, 6)
    assert db_eval_iou(e, e) == 1.0
    assert db_eval_boundary(e, e) == 1.0
    assert dice(e, e) == 1.0
    # prediction empty: precision 1, recall 0 -> F 0; truth empty: precision 0, recall 1 -> F 0
    assert db_eval_boundary(a, e) == 0.0
    assert db_eval_boundary(e, a) == 0.0
    assert db_eval_iou(a, e) == 0.0


def test_hand_computed_iou_and_dice():
    a = square((20, 20), 4, 4, 4, 4)       # 16 px
    b = square((20, 20), 4, 5, 4, 4)       # shifted one column: 12 px overlap
    assert db_eval_iou(a, b) == pytest.approx(12 / 20)
    assert dice(a, b) == pytest.approx(2 * 12 / 32)
    # void pixels are left out of both intersection and union
    void = np.zeros_like(a)
    void[:, 8] = 1                         # removes b's extra column
    assert db_eval_iou(a, b, void) == pytest.approx(12 / 16)


def test_one_pixel_shift_within_tolerance_keeps_f_one():
    shape = (64, 64)                       # tolerance ceil(0.008 * 90.5) = 1 px
    assert boundary_tolerance(shape) == 1
    a = square(shape, 20, 20, 15, 12)
    b = square(shape, 20, 21, 15, 12)
    assert db_eval_boundary(a, b) == 1.0
    assert db_eval_iou(a, b) < 1.0
    c = square(shape, 20, 23, 15, 12)      # 3 px: vertical edges no longer match
    assert db_eval_boundary(a, c) < 1.0


def test_tolerance_and_disk_follow_the_reference():
    assert boundary_tolerance((512, 512)) == 6     # ceil(5.79)
    assert boundary_tolerance((480, 854)) == 8     # DAVIS 480p: ceil(7.84)
    assert boundary_tolerance((100, 100), bound_th=3) == 3
    # skimage.morphology.disk: lattice points with x^2 + y^2 <= r^2 (Gauss circle numbers)
    assert [int(disk(r).sum()) for r in (1, 2, 3, 6)] == [5, 13, 29, 113]
    assert disk(6).shape == (13, 13)
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def test_seg2bmap_hand_computed():
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(seg2bmap(m), expected)
    # the image border is not a boundary: a full mask has none, and scores 1 against itself
    full = np.ones((10, 12), np.uint8)
    assert not seg2bmap(full).any()
    assert db_eval_boundary(full, full) == 1.0


def test_statistics_recall_and_decay():
    s = db_statistics([1, 1, 1, 1, 0, 0, 0, 0])
    assert s["mean"] == 0.5
    assert s["recall"] == 0.5
    assert s["decay"] == 1.0               # mean of bin 1 (frames 0-2) minus mean of bin 4 (frames 5-7)


def test_per_frame_arrays():
    a = np.stack([square((30, 30), 5, 5, 8, 8), np.zeros((30, 30), np.uint8)])
    b = np.stack([square((30, 30), 5, 5, 8, 8), square((30, 30), 1, 1, 3, 3)])
    np.testing.assert_array_equal(db_eval_iou(a, b), [1.0, 0.0])
    np.testing.assert_array_equal(db_eval_boundary(a, b), [1.0, 0.0])


# ---------------------------------------------------------- aggregation

def test_evaluate_sequence_excludes_support_and_averages_per_object():
    t, shape = 5, (40, 40)
    true = np.zeros((t,) + shape, np.uint8)
    pred = np.zeros_like(true)
    for i in range(t):
        true[i][square(shape, 5, 5, 10, 10) > 0] = 1
        true[i][square(shape, 25, 25, 8, 8) > 0] = 2
        pred[i][square(shape, 5, 5, 10, 10) > 0] = 1       # object 1 perfect
    pred[0][square(shape, 25, 25, 8, 8) > 0] = 2            # object 2 only in the support frame 0
    pred[3][pred[3] == 1] = 7                               # an unknown label is ignored (object 1 missed)
    res = evaluate_sequence(pred, true, [1, 2], exclude_frames=[0])
    assert res[1]["frames"] == [1, 2, 3, 4]
    assert res[1]["J"] == pytest.approx(0.75)               # 1, 1, 0, 1
    assert res[1]["F"] == pytest.approx(0.75)
    assert res[1]["JF"] == pytest.approx(0.75)
    assert res[2]["J"] == 0.0 and res[2]["F"] == 0.0 and res[2]["Dice"] == 0.0
    with_support = evaluate_sequence(pred, true, [2])
    assert with_support[2]["J"] == pytest.approx(0.2)
    summary = summarize([res, {3: {"J": 1.0, "F": 0.5, "Dice": 1.0}}])
    assert summary["n_objects"] == 3
    assert summary["J"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    assert summary["F"] == pytest.approx((0.75 + 0.0 + 0.5) / 3)
    assert summary["JF"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    with pytest.raises(ValueError):
        evaluate_sequence(pred[:1], true[:1], [1], exclude_frames=[0])
    assert math.isnan(summarize([])["JF"])


# ------------------------------------- independent statement of the reference definitions

def _reference_bmap(seg):
    """DAVIS _seg2bmap rules written out pixel by pixel (slow, independent of the vectorised code)."""
    seg = seg.astype(bool)
    h, w = seg.shape
    b = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            e = seg[y, x + 1] if x + 1 < w else False
            s = seg[y + 1, x] if y + 1 < h else False
            se = seg[y + 1, x + 1] if (x + 1 < w and y + 1 < h) else False
            if y == h - 1 and x == w - 1:
                b[y, x] = False
            elif x == w - 1:
                b[y, x] = seg[y, x] ^ s
            elif y == h - 1:
                b[y, x] = seg[y, x] ^ e
            else:
                b[y, x] = (seg[y, x] ^ e) or (seg[y, x] ^ s) or (seg[y, x] ^ se)
    return b


def _reference_f(pred, gt, bound_th=0.008):
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    se = (xx ** 2 + yy ** 2) <= r ** 2
    fb, gb = _reference_bmap(pred), _reference_bmap(gt)
    fd = ndimage.binary_dilation(fb, structure=se)
    gd = ndimage.binary_dilation(gb, structure=se)
    nf, ng = fb.sum(), gb.sum()
    if nf == 0 and ng == 0:
        p = rc = 1.0
    elif nf == 0:
        p, rc = 1.0, 0.0
    elif ng == 0:
        p, rc = 0.0, 1.0
    else:
        p, rc = (fb & gd).sum() / nf, (gb & fd).sum() / ng
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (90, 70)])
def test_matches_reference_definitions_on_random_blobs(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(4):
        noise_a = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
        a = noise_a > 0.05
        b = ndimage.gaussian_filter(noise_a + 0.3 * rng.standard_normal(shape), 2) > 0.1
        np.testing.assert_array_equal(seg2bmap(a), _reference_bmap(a))
        assert db_eval_boundary(a, b) == pytest.approx(_reference_f(b, a), abs=1e-12)
        assert db_eval_boundary(a, b, bound_th=2) == pytest.approx(_reference_f(b, a, 2), abs=1e-12)
        inter, union = (a & b).sum(), (a | b).sum()
        assert db_eval_iou(a, b) == pytest.approx(inter / union)
