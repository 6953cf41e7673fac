"""Training data: static images made into triplets by deformation, sparsely labelled cines
(only labelled frames are CE targets), user files read from a config's ``data`` entries."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import moving_disc_cine
from fsvos.errors import FsvosInputError
from fsvos.train.config import TrainConfig
from fsvos.train.data import CinePool, Intensity, StaticPool
from fsvos.train.deform import deformed_triplet
from fsvos.train.sources import build_pool


def test_deformed_triplet_moves_and_bends_the_object_but_keeps_it():
    frames, labels = moving_disc_cine(n_frames=1, size=96, seed=3)
    rng = np.random.default_rng(0)
    f3, l3 = deformed_triplet(rng, frames[0], labels[0], elastic=0.03)
    assert f3.shape == (3, 96, 96) and f3.dtype == np.uint8 and l3.dtype == np.uint8
    assert set(np.unique(l3)) <= {0, 1, 2}
    area = (labels[0] == 1).sum()
    for t in range(3):
        assert 0.6 * area < (l3[t] == 1).sum() < 1.6 * area  # zoom 0.9-1.1 and a gentle bend
        assert not np.array_equal(l3[t], labels[0])
        # the image moved with its labels: the disc is dark where its label is
        assert f3[t][l3[t] == 1].mean() < f3[t][l3[t] == 0].mean() - 40
    assert not np.array_equal(l3[0], l3[1])


def test_static_pool_samples_are_labelled_triplets():
    frames, labels = moving_disc_cine(n_frames=3, size=96, seed=1)
    pool = StaticPool.from_cines(CinePool([(frames, labels)]))
    assert len(pool.images) == 3
    s = pool.sample(np.random.default_rng(0), crop=64, max_skip=3, max_objects=2)
    assert s.frames.shape == (3, 64, 64) and s.labels.shape == (3, 64, 64)
    assert s.labelled.all() and (s.labels[0] > 0).any()


def _sparse_cine(n=16):
    frames, labels = moving_disc_cine(n_frames=n, size=64, seed=5)
    flags = np.zeros(n, bool)
    flags[[0, 5, 10, 15]] = True
    return frames, labels, flags


def test_sparse_cines_use_labelled_frames_as_targets_only():
    frames, labels, flags = _sparse_cine()
    # the true labels exist on every frame here, but only the flagged frames may be used
    pool = CinePool([(frames, labels)], labelled=[flags])
    rng = np.random.default_rng(0)
    seen_unlabelled = 0
    for _ in range(60):
        s = pool.sample(rng, crop=64, max_skip=5, max_objects=2)
        assert s.labelled[0] and (s.labels[0] > 0).any()
        assert s.labelled[1] or s.labelled[2]  # without the consistency loss a target is needed
        for t in (1, 2):
            if not s.labelled[t]:
                seen_unlabelled += 1
                assert not s.labels[t].any()  # no label leaks from an unlabelled frame
        assert 1 <= s.gap <= 5
    assert seen_unlabelled > 0
    both = [pool.sample(rng, 64, 5, 2, unlabelled_targets=True).labelled for _ in range(80)]
    assert any(not (b[1] or b[2]) for b in both)


def test_fully_labelled_pool_keeps_the_original_draw():
    frames, labels = moving_disc_cine(n_frames=12, size=64, seed=2)
    a = CinePool([(frames, labels)]).sample(np.random.default_rng(7), 64, 3, 2)
    b = CinePool([(frames, labels)], labelled=[np.ones(12, bool)]).sample(np.random.default_rng(7), 64, 3, 2)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels) and a.labelled.all()


def test_cines_from_npy_and_nrrd_or_dicom_seg_files(tmp_path):
    import nrrd

    from fsvos.io.cine import load_cine
    from fsvos.io.seg import write_seg
    from fsvos.io.xa_write import write_xa_cine

    frames, labels, flags = _sparse_cine()
    sparse = labels * flags[:, None, None]
    (tmp_path / "stacks").mkdir()
    np.save(tmp_path / "stacks" / "a.npy", frames)
    nrrd.write(str(tmp_path / "stacks" / "a_labels.nrrd"), sparse, index_order="C")
    write_xa_cine(tmp_path / "b.dcm", frames, frame_time_ms=66.7)
    write_seg(tmp_path / "b_seg.dcm", sparse, load_cine(tmp_path / "b.dcm"))
    cfg_path = tmp_path / "ft.toml"
    cfg_path.write_text('[data]\nsource = "cines"\n'
                        '[[data.data]]\ncine = "stacks/*.npy"\nlabels = "stacks/{stem}_labels.nrrd"\n'
                        '[[data.data]]\ncine = "b.dcm"\nlabels = "{stem}_seg.dcm"\n')
    pool = build_pool(TrainConfig.load(cfg_path))
    assert isinstance(pool, CinePool) and len(pool.cines) == 2
    for (f, lab), m in zip(pool.cines, pool.labelled):
        assert np.array_equal(f, frames) and np.array_equal(lab, sparse) and np.array_equal(m, flags)
    # an explicit frame list wins over "frames with a label"
    cfg_path.write_text('[data]\nsource = "static"\n'
                        '[[data.data]]\ncine = "stacks/a.npy"\nlabels = "stacks/a_labels.nrrd"\nframes = [0, 5]\n')
    static = build_pool(TrainConfig.load(cfg_path))
    assert isinstance(static, StaticPool) and len(static.images) == 2


def test_bad_training_data_names_the_file(tmp_path):
    frames, labels, _ = _sparse_cine()
    np.save(tmp_path / "a.npy", frames)
    np.save(tmp_path / "a_lab.npy", labels[:, :32])
    cfg = TrainConfig(source="cines", data=[{"cine": str(tmp_path / "a.npy"), "labels": str(tmp_path / "a_lab.npy")}])
    with pytest.raises(FsvosInputError, match="do not match the cine") as err:
        build_pool(cfg)
    assert err.value.path == str(tmp_path / "a_lab.npy")
    cfg.data = [{"cine": str(tmp_path / "none*.dcm"), "labels": "x"}]
    with pytest.raises(FsvosInputError, match="no file or folder matches"):
        build_pool(cfg)
    np.save(tmp_path / "a_lab.npy", np.zeros_like(labels))
    cfg.data = [{"cine": str(tmp_path / "a.npy"), "labels": str(tmp_path / "a_lab.npy")}]
    with pytest.raises(FsvosInputError, match="no labelled frame"):
        build_pool(cfg)


def test_synthetic_pool_refreshes_in_turn_and_a_resumed_run_rebuilds_it():
    kw = dict(n_cases=4, seed=5, size=64, frames=(8, 9), refresh_cases=1)
    pool = CinePool.synthetic(**kw)
    first = [f.copy() for f, _ in pool.cines]
    assert pool.refresh(1) == [0] and pool.refresh(2) == [1]
    assert [not np.array_equal(a, f) for a, (f, _) in zip(first, pool.cines)] == [True, True, False, False]
    # a run refreshing every 2 steps, resumed at step 5, had refreshes at steps 2 and 4
    rebuilt = CinePool.synthetic(**kw, refresh_every=2, at_step=5)
    for (fa, la), (fb, lb) in zip(pool.cines, rebuilt.cines):
        assert np.array_equal(fa, fb) and np.array_equal(la, lb)
    at4 = CinePool.synthetic(**kw, refresh_every=2, at_step=4)  # step 4's refresh is the loop's to do
    assert not np.array_equal(at4.cines[0][0], first[0]) and np.array_equal(at4.cines[1][0], first[1])
    with pytest.raises(ValueError, match="synthetic"):
        CinePool([(f, l) for f, l in pool.cines]).refresh(1)


def test_intensity_augmentation_spread_follows_the_config(tmp_path):
    """contrast_sigma sets the log-normal spread of the contrast factor samples get; zero sigmas
    leave the frames as they are."""
    rng = np.random.default_rng(0)
    f = rng.uniform(0.2, 0.8, size=(3, 32, 32))
    np.testing.assert_allclose(Intensity(0, 0, 0, 0).apply(rng, f), f, atol=1e-12)
    ratios = {}
    for sigma in (0.2, 0.5):
        aug = Intensity(gamma=0, contrast=sigma, brightness=0, noise=0)
        ratios[sigma] = np.std([np.log(aug.apply(rng, f).std() / f.std()) for _ in range(400)])
        assert abs(ratios[sigma] - sigma) < 0.05 * sigma + 0.02
    # the config reaches the pool that training draws from
    frames, labels = moving_disc_cine(n_frames=6, size=64, seed=2)
    np.save(tmp_path / "f.npy", frames)
    np.save(tmp_path / "l.npy", labels)
    cfg = TrainConfig(source="cines", data=[{"cine": str(tmp_path / "f.npy"), "labels": str(tmp_path / "l.npy")}],
                      contrast_sigma=0.5, gamma_sigma=0.1)
    pool = build_pool(cfg)
    assert pool.intensity == Intensity(gamma=0.1, contrast=0.5, brightness=0.05, noise=0.02)
    assert TrainConfig().contrast_sigma == Intensity().contrast  # defaults: the bundled default's recipe
