"""The optical-flow anchor: DIS flow chained from the support frame(s)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fsvos.errors import FsvosInputError
from fsvos.flow import propagate_flow
from fsvos.metrics import evaluate_sequence


def translating_disc(n_frames=12, h=96, w=128, dx=3.0, dy=1.0, radius=14, seed=0):
    """A dark textured disc translating over a static textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = cv2.GaussianBlur((rng.random((h, w)) * 60).astype(np.float32), (0, 0), 1.5)
    fg = cv2.GaussianBlur((rng.random((h, w)) * 60).astype(np.float32), (0, 0), 1.5)
    frames = np.zeros((n_frames, h, w), np.uint8)
    labels = np.zeros((n_frames, h, w), np.uint8)
    for t in range(n_frames):
        ox, oy = dx * t, dy * t
        m = (xx - 30 - ox) ** 2 + (yy - 40 - oy) ** 2 <= radius ** 2
        moved = cv2.warpAffine(fg, np.float32([[1, 0, -ox], [0, 1, -oy]]), (w, h),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        img = 170 + bg
        img[m] = 50 + moved[m]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        labels[t] = m
    return frames, labels


def test_tracks_a_translating_disc_both_ways():
    frames, truth = translating_disc()
    support = 5
    given = truth[support].copy()
    out = propagate_flow(frames, {support: given})
    assert out.dtype == np.uint8 and out.shape == frames.shape
    np.testing.assert_array_equal(out[support], given)
    res = evaluate_sequence(out, truth, [1], exclude_frames=[support])[1]
    assert res["J"] > 0.85, res["J_per_frame"]
    assert min(res["J_per_frame"]) > 0.75
    # the result moved: the last frame overlaps the true last disc far better than the support disc
    stale = evaluate_sequence(np.repeat(given[None], len(frames), 0), truth, [1])[1]
    assert res["J"] > stale["J"] + 0.3


def test_each_frame_uses_the_nearest_support():
    frames, truth = translating_disc(n_frames=9)
    first = truth[0].astype(np.uint8)           # object painted as label 1 in frame 0
    last = truth[8].astype(np.uint8) * 2        # and as label 2 in frame 8
    out = propagate_flow(frames, {8: last, 0: first})
    np.testing.assert_array_equal(out[0], first)
    np.testing.assert_array_equal(out[8], last)
    for t in range(1, 5):                        # frame 4 is a tie: the earlier support wins
        assert (out[t] == 1).any() and not (out[t] == 2).any(), t
    for t in range(5, 8):
        assert (out[t] == 2).any() and not (out[t] == 1).any(), t


def test_many_objects_and_presmoothing():
    frames, truth = translating_disc(n_frames=6)
    lab = truth[0].astype(np.uint8)
    lab[:10, :10] = 3
    lab[-8:, -20:] = 6
    lab[40:50, 100:110] = 9
    lab[60:70, 60:70] = 12                      # five objects: more than one remap chunk
    out = propagate_flow(frames, {0: lab}, presmooth_sigma=1.0, preset="fast")
    assert set(np.unique(out[-1])) <= {0, 1, 3, 6, 9, 12}
    assert (out[-1] == 12).sum() > 50


def test_bad_input_is_reported():
    frames, truth = translating_disc(n_frames=4)
    with pytest.raises(FsvosInputError):
        propagate_flow(frames, {})
    with pytest.raises(FsvosInputError):
        propagate_flow(frames, {4: truth[0]})
    with pytest.raises(FsvosInputError):
        propagate_flow(frames, {0: truth[0][:10]})
    with pytest.raises(FsvosInputError):
        propagate_flow(frames.astype(np.float32), {0: truth[0]})
    with pytest.raises(FsvosInputError):
        propagate_flow(frames, {0: truth[0]}, preset="slow")
