"""The decoder-resolution bound (fsvos.bound, ``fsvos eval --method bound``) on hand-made and generated labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsvos.bound import bound_labels
from fsvos.metrics import evaluate_sequence
from test_cli_propagate import fsvos
from test_commands import dataset  # noqa: F401  (fixture)


def _disc_and_wire(n: int = 2, size: int = 64) -> np.ndarray:
    """Labels (n, size, size): a disc of radius 10 (label 1) and a 1-px diagonal wire (label 2)."""
    lab = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    lab[:, (yy - 20) ** 2 + (xx - 22) ** 2 < 100] = 1
    idx = np.arange(34, 62)
    lab[:, idx, idx - 30] = 2
    return lab


def test_a_stride_4_decoder_draws_a_disc_but_not_a_one_pixel_wire():
    lab = _disc_and_wire()
    j = {k: v["J"] for k, v in evaluate_sequence(bound_labels(lab, [1, 2], stride=4), lab, [1, 2]).items()}
    assert j[1] > 0.95  # a blob is drawn almost exactly at 1/4
    assert 0.3 < j[2] < 0.8  # a diagonal 1-px wire is drawn, but wider, broken or shifted (J 0.63)
    full = bound_labels(lab, [1, 2], stride=1)
    assert np.array_equal(full, lab)  # at full resolution the bound is the truth itself
    only_disc = bound_labels(lab, [1], stride=4)
    assert set(np.unique(only_disc)) == {0, 1}  # objects not asked for are background


def test_bound_labels_reject_bad_input():
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        bound_labels(np.zeros((8, 8), np.uint8), [1])
    with pytest.raises(ValueError, match="stride"):
        bound_labels(np.zeros((1, 8, 8), np.uint8), [1], stride=0)
    assert not bound_labels(np.zeros((1, 8, 8), np.uint8), []).any()


def test_eval_bound_scores_the_selected_frames(dataset, tmp_path):  # noqa: F811
    r = fsvos("eval", dataset, "--method", "bound", "--bound-stride", "1", "--bound-every", "3",
              "--out", tmp_path / "s1")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "s1" / "results.json").read_text())
    assert summary["method"] == "bound" and "stride 1" in summary["weights"]
    assert summary["overall"]["JF"] == 1.0  # stride 1: the truth, on every scored frame
    assert (tmp_path / "s1" / "case_000.png").exists()
    r = fsvos("eval", dataset, "--method", "bound", "--bound-every", "3", "--no-pictures", "--out", tmp_path / "s4")
    assert r.returncode == 0, r.stderr
    jf = json.loads((tmp_path / "s4" / "results.json").read_text())["overall"]["JF"]
    assert 0.5 < jf < 1.0  # at 1/4 some thin structure is lost
    r = fsvos("eval", dataset, "--method", "bound", "--bound-every", "0")
    assert r.returncode == 2 and "--bound-every" in r.stderr
