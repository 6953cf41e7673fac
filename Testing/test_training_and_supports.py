"""Training works (loss falls, checkpoints load and resume), and what a trained model does with supports.

A compact model is trained here for a few hundred steps on moving-disc cines (about half a minute on
2 cores); it then tracks a disc it has never seen, and two supports beat one.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import moving_disc_cine
from fsvos import Propagator, load_model
from fsvos.model.network import COMPACT_ARCH
from fsvos.train.config import TrainConfig
from fsvos.train.data import CinePool
from fsvos.train.loop import train


def _cfg(out, steps, **kw):
    base = dict(arch="compact", steps=steps, batch=8, crop=64, max_skip=3, objects=2, lr=1e-3, window=7,
                precision="bf16", out=str(out), log_every=25, checkpoint_every=10_000, seed=0,
                bootstrap_start=10**6, bootstrap_end=10**6 + 1)
    base.update(kw)
    return TrainConfig(**base)


def _pool():
    # no geometric augmentation: 150 steps on 64 px discs are about tracking, not invariance
    return CinePool([moving_disc_cine(n_frames=12, size=64, seed=s, step=1.5 + s % 3) for s in range(8)], affine=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    final = train(_cfg(out, 150), _pool(), log=lambda m: None)
    return out, final


def _iou(pred, truth, frames):
    vals = []
    for t in frames:
        a, b = pred[t] == 1, truth[t] == 1
        vals.append((a & b).sum() / max((a | b).sum(), 1))
    return float(np.mean(vals))


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(trained):
    out, final = trained
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [25, 50, 75, 100, 125, 150]
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    model = load_model(final)
    assert model.arch == COMPACT_ARCH and model.fsvos_info["meta"]["steps"] == 150


def test_trained_model_tracks_and_two_supports_beat_one(trained):
    _, final = trained
    model = load_model(final)
    frames, truth = moving_disc_cine(n_frames=16, size=64, seed=99, step=2.0)
    p = Propagator(model, window=7, mem_every=3)
    inner = range(1, 15)
    one = p.propagate(frames, {0: truth[0]}).labels
    two = p.propagate(frames, {0: truth[0], 15: truth[15]}).labels
    assert _iou(one, truth, inner) > 0.6
    assert _iou(two, truth, inner) > _iou(one, truth, inner)


def test_training_resumes_exactly(tmp_path):
    pool = _pool()
    a = train(_cfg(tmp_path / "a", 6, log_every=1, checkpoint_every=3, batch=2), pool, log=lambda m: None)
    logs = []
    train(_cfg(tmp_path / "b", 3, log_every=1, checkpoint_every=3, batch=2), pool, log=lambda m: None)
    b = train(_cfg(tmp_path / "b", 6, log_every=1, checkpoint_every=3, batch=2), pool, log=logs.append)
    assert any("resumed" in m and "step 3" in m for m in logs)
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-3, atol=1e-3)
