"""The training loop with the new losses and sources: the forward pass gives the auxiliary
losses what they need without changing its logits, every parameter learns, last.pth keeps
its format, resume stays exact with the contrastive head, and ``fsvos train`` fine-tunes
on sparsely labelled cine files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import moving_disc_cine
from fsvos.cli import main
from fsvos.model.network import COMPACT_ARCH, FSVOSNet
from fsvos.train.config import TrainConfig
from fsvos.train.data import CinePool, collate, collate_flags
from fsvos.train.loop import train
from fsvos.train.objective import Objective
from fsvos.train.step import forward_triplet


def _cfg(out, steps, **kw):
    base = dict(arch="compact", steps=steps, batch=2, crop=64, max_skip=3, objects=2, lr=1e-3, window=7,
                out=str(out), log_every=1, checkpoint_every=2, seed=0, bootstrap_start=1, bootstrap_end=3)
    base.update(kw)
    return TrainConfig(**base)


def _pool(sparse=False):
    cines = [moving_disc_cine(n_frames=12, size=64, seed=s, step=1.5 + s % 3) for s in range(4)]
    flags = None
    if sparse:
        flags = [np.isin(np.arange(12), [0, 4, 8, 11]) for _ in cines]
    return CinePool(cines, labelled=flags)


def _batch(pool, n=2, seed=0):
    samples = [pool.sample(np.random.default_rng(seed + i), 64, 3, 2, unlabelled_targets=True) for i in range(n)]
    return collate(samples, 2) + collate_flags(samples)


def test_forward_with_aux_gives_the_same_logits_and_the_loss_inputs():
    torch.manual_seed(0)
    net = FSVOSNet(COMPACT_ARCH).eval()
    frames, labels, selector, _, _ = _batch(_pool())
    with torch.no_grad():
        plain = forward_triplet(net, frames, labels, selector, 7)
        logits, aux = forward_triplet(net, frames, labels, selector, 7, aux=True, last_value=True)
    for a, b in zip(plain, logits):
        assert torch.equal(a, b)
    assert aux.keys.shape == (2, 3, COMPACT_ARCH.key_dim, 4, 4)
    assert len(aux.values) == 3 and aux.values[2].shape == (2, 2, COMPACT_ARCH.value_dim, 16)
    assert len(aux.probs) == 2 and torch.allclose(aux.probs[0].sum(1), torch.ones(2, 64, 64))


def test_every_parameter_learns_with_all_losses_on():
    torch.manual_seed(0)
    cfg = _cfg("unused", 1, contrastive=0.01, temporal=0.1, consistency=1.0, jaccard=0.5)
    obj = Objective(FSVOSNet(COMPACT_ARCH).train(), cfg)
    frames, labels, selector, labelled, gap = _batch(_pool(sparse=True), n=4)
    gap[:] = 1  # neighbours: the consistency term takes part
    loss, parts, _ = obj(frames, labels, selector, labelled, gap, step=0)
    assert set(parts) == {"ce", "jaccard", "contrastive", "temporal", "consistency", "top_p"}
    assert all(np.isfinite(v) for v in parts.values())
    loss.backward()
    missing = [n for n, p in obj.named_parameters() if p.grad is None]
    assert not missing, missing  # what DistributedDataParallel needs (no unused parameters)


def test_default_losses_keep_the_checkpoint_format_and_aux_losses_resume_exactly(tmp_path):
    pool = _pool(sparse=True)
    train(_cfg(tmp_path / "plain", 1), _pool(), log=lambda m: None)
    state = torch.load(tmp_path / "plain" / "last.pth", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "step", "rng", "torch_rng"}  # today's last.pth
    kw = dict(contrastive=0.01, temporal=0.1, consistency=0.5, checkpoint_every=1)
    _, a = train(_cfg(tmp_path / "a", 2, **kw), pool, log=lambda m: None, return_model=True)
    train(_cfg(tmp_path / "b", 1, **kw), pool, log=lambda m: None)
    logs = []
    _, b = train(_cfg(tmp_path / "b", 2, **kw), pool, log=logs.append, return_model=True)
    assert any("resumed" in m and "step 1" in m for m in logs)
    state = torch.load(tmp_path / "b" / "last.pth", map_location="cpu", weights_only=True)
    assert {"heads", "heads_optimizer"} <= set(state)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)
    rows = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["loss_contrastive"]) > 0 and float(r["loss_temporal"]) > 0 for r in rows)


def test_cli_fine_tunes_on_sparsely_labelled_files(tmp_path, capsys):
    import nrrd

    frames, labels = moving_disc_cine(n_frames=12, size=64, seed=4)
    sparse = labels.copy()
    sparse[[1, 2, 3, 5, 6, 7, 9, 10]] = 0
    np.save(tmp_path / "c1.npy", frames)
    nrrd.write(str(tmp_path / "c1.labels.nrrd"), sparse, index_order="C")
    init = tmp_path / "init.pth"
    from fsvos.model.weights import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(FSVOSNet(COMPACT_ARCH).eval(), init)
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("model: {init: init.pth}\n"
                   "data: {source: cines, crop: 64, max_skip: 3, objects: 2,\n"
                   "       data: [{cine: '*.npy', labels: '{stem}.labels.nrrd'}]}\n"
                   "train: {batch: 2, lr: 1e-5, weight_decay: 0.05, window: 7, precision: bf16}\n"
                   "loss: {contrastive: 0.01, consistency: 0.1}\n"
                   "output: {log_every: 1, checkpoint_every: 10}\n")
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "read 1 cines (4 labelled frames of 12)" in err and "step 2/2" in err
    assert "\r" not in err  # no progress bar when stderr is not a terminal
    from fsvos import load_model

    meta = load_model(out / "final.pth").fsvos_info["meta"]
    assert meta["config"]["source"] == "cines"
    assert meta["work_size"] is None  # learnt on the user's cines at their own size: run natively


def test_static_stage_trains(tmp_path):
    from fsvos.train.data import StaticPool

    pool = StaticPool.from_cines(_pool())
    final = train(_cfg(tmp_path, 1, source="static"), pool, log=lambda m: None)
    assert final.is_file()


def test_cuda_device_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        import pytest

        pytest.skip("a GPU is present: see test_bf16_training_with_contrastive_loss_on_each_available_device")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nsteps = 1\n')
    assert main(["train", str(cfg), "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


#: every device this machine has: the CPU always, a CUDA GPU when present
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_with_contrastive_loss_on_each_available_device(tmp_path, device):
    _, net = train(_cfg(tmp_path, 2, device=device, precision="bf16", contrastive=0.01), _pool(),
                   log=lambda m: None, return_model=True)
    assert next(net.parameters()).device.type == device and (tmp_path / "final.pth").is_file()


def test_refreshed_synthetic_pool_resumes_exactly(tmp_path):
    kw = dict(source="synth", cases=2, size=64, frames=[8, 9], data_seed=3, refresh_every=2, refresh_cases=1,
              checkpoint_every=1)
    logs_a = []
    _, a = train(_cfg(tmp_path / "a", 3, **kw), log=logs_a.append, return_model=True)
    assert any("step 2: 1 new synthetic cines" in m for m in logs_a)
    train(_cfg(tmp_path / "b", 2, **kw), log=lambda m: None)  # stops before the refresh at step 2
    _, b = train(_cfg(tmp_path / "b", 3, **kw), log=lambda m: None, return_model=True)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)
    train(_cfg(tmp_path / "c", 3, **kw), log=lambda m: None)  # resumed after the refresh
    _, c = train(_cfg(tmp_path / "c", 4, **kw), log=lambda m: None, return_model=True)
    _, d = train(_cfg(tmp_path / "d", 4, **kw), log=lambda m: None, return_model=True)
    for (k, vc), vd in zip(c.state_dict().items(), d.state_dict().values()):
        torch.testing.assert_close(vc, vd, rtol=1e-4, atol=1e-5, msg=k)
    from fsvos import Propagator, load_model

    trained = load_model(tmp_path / "d" / "final.pth")  # learnt on 64-px synthetic cines: runs at 64
    assert trained.fsvos_info["meta"]["work_size"] == 64 and Propagator(trained).work_size == 64
