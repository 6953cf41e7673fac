"""The full-resolution refiner (``refine_dim``): it starts as the identity on weights without one,
its compiled inference pass equals its torch form, the propagator feeds it the frame, training grows
it onto existing weights with its own learning rate, and its weights save and load."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import moving_disc_cine, randomised_model
from fsvos import Propagator
from fsvos.errors import FsvosInputError
from fsvos.model import decoder_kernels as D
from fsvos.model.network import COMPACT_ARCH, COMPACT_REFINE_ARCH, FSVOSNet, arch_name
from fsvos.model.refine import Refiner
from fsvos.model.weights import load_model, save_checkpoint
from fsvos.train.config import TrainConfig
from fsvos.train.data import CinePool, collate
from fsvos.train.loop import build_model, lr_at, train
from fsvos.train.step import forward_triplet

pytestmark = pytest.mark.skipif(not D.available(), reason="numba is not available")


def _random_refiner(d4=16, dim=8, seed=0) -> Refiner:
    """A refiner whose output convolution is not zero (a trained one's is not)."""
    torch.manual_seed(seed)
    r = Refiner(d4, dim).eval()
    with torch.no_grad():
        r.out.weight.normal_(0, 0.3)
        r.out.bias.fill_(0.2)
        r.logit_gain.weight.normal_(0, 1.0)
    return r


def _refine_model(seed=3) -> FSVOSNet:
    model = randomised_model(COMPACT_REFINE_ARCH, seed=seed)
    with torch.no_grad():
        model.refiner.out.weight.normal_(0, 0.3)
    return model


def test_a_new_refiner_starts_as_the_identity():
    """Weights without a refiner, grown by one, propagate exactly as before (its last convolution
    starts at zero); a trained refiner changes the result."""
    base = randomised_model(COMPACT_ARCH, seed=1)
    grown = FSVOSNet(COMPACT_REFINE_ARCH).eval()
    missing, unexpected = grown.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(n.startswith("refiner.") for n in missing)
    frames, labels = moving_disc_cine(n_frames=6, size=64)
    results = [Propagator(m, precision="fp32", keep_probs=True).propagate(frames, {0: labels[0]}) for m in (base, grown)]
    assert np.array_equal(results[0].probs, results[1].probs)
    with torch.no_grad():
        grown.refiner.out.weight.normal_(0, 0.5)
    changed = Propagator(grown, precision="fp32", keep_probs=True).propagate(frames, {0: labels[0]})
    assert np.abs(changed.probs - results[0].probs).max() > 1e-3


@pytest.mark.parametrize("image_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, h", [(1, 8), (3, 16), (2, 1)])
def test_compiled_refinement_equals_its_torch_form(k, h, image_dtype, monkeypatch):
    """The one-pass kernel (hidden rows in a ring, no full-resolution map) gives torch's
    upsample + sum + ReLU + 3x3 convolution within float32 rounding, for one or several objects,
    maps of one source row, image features planar or channels-last, float32 or bfloat16; on 2
    threads bitwise as on 1."""
    r = _random_refiner()
    torch.manual_seed(1)
    feat4 = torch.randn(k, 16, h, h + 3).relu()
    logits = torch.randn(k, 1, 4 * h, 4 * (h + 3)) * 4
    image = torch.randn(1, 1, 4 * h, 4 * (h + 3))
    with torch.no_grad():
        image_feat = r.image_features(image).to(image_dtype)
    # autograd on: torch's steps, on the same (rounded) image features
    want = r(logits, feat4, image_feat.float().expand(k, -1, -1, -1)).detach()
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.inference_mode():
            got = r(logits, feat4, image_feat.contiguous(memory_format=layout))
        assert got.shape == (k, 1, 4 * h, 4 * (h + 3)) and got.dtype == torch.float32
        assert (got - want).abs().max() < 1e-4
        results.append(got)
    assert torch.equal(results[0], results[1])
    monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
    with torch.inference_mode():
        assert torch.equal(r(logits, feat4, image_feat), results[0])


def test_refine_tail_rejects_maps_that_do_not_fit():
    r = _random_refiner()
    proj = torch.zeros(2, 8, 4, 4)
    args = (r.logit_gain.weight, r.out.weight, r.out.bias)
    with pytest.raises(ValueError, match="do not fit"):
        D.refine_tail(proj, torch.zeros(1, 8, 16, 12), torch.zeros(2, 1, 16, 16), *args)
    with pytest.raises(ValueError, match="float32"):
        D.refine_tail(proj, torch.zeros(1, 8, 16, 16), torch.zeros(2, 1, 16, 16, dtype=torch.bfloat16), *args)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_decoder_with_refiner_equals_the_plain_network(precision, monkeypatch):
    """decode() as the propagator runs it (BatchNorm folded, channels-last, compiled steps) equals
    the plain decoder followed by the refiner in torch; without the image it says what it needs."""
    net = _refine_model()
    fast = Propagator(net, precision=precision).model
    dt = torch.float32 if precision == "fp32" else torch.bfloat16
    a = net.arch
    torch.manual_seed(4)
    readout = torch.randn(3, a.value_dim, 8, 8).relu()
    thin = torch.randn(1, a.thin_dim, 8, 8)
    f8 = torch.randn(1, net.decoder.up_16_8.skip_conv.in_channels, 16, 16).relu()
    f4 = torch.randn(1, net.decoder.up_8_4.skip_conv.in_channels, 32, 32).relu()
    image = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        logits, feat4 = net.decoder(torch.cat([readout, thin.expand(3, -1, -1, -1)], 1), f8.expand(3, -1, -1, -1),
                                    f4.expand(3, -1, -1, -1), with_features=True)
        want = torch.sigmoid(net.refiner(logits, feat4, net.refiner.image_features(image).expand(3, -1, -1, -1)))
        args = [t.to(dt).contiguous(memory_format=torch.channels_last) for t in (readout, thin, f8, f4, image)]
        got = fast.decode(*args)
        monkeypatch.setenv("FSVOS_FUSED_DECODER", "0")
        torch_steps = fast.decode(*args)
        with pytest.raises(ValueError, match="needs the image"):
            fast.decode(*args[:4])
    tol = 1e-5 if precision == "fp32" else 5e-2
    assert got.shape == (3, 1, 128, 128)
    assert (got - want).abs().max() < tol and (torch_steps - want).abs().max() < tol


def test_refiner_weights_save_load_and_name(tmp_path):
    model = _refine_model()
    save_checkpoint(model, tmp_path / "r.pth")
    loaded = load_model(tmp_path / "r.pth")
    assert loaded.arch == COMPACT_REFINE_ARCH and arch_name(loaded.arch) == "compact-refine"
    assert torch.equal(loaded.refiner.out.weight, model.refiner.out.weight)
    assert arch_name(COMPACT_ARCH) == "compact" and FSVOSNet(COMPACT_ARCH).refiner is None


def _pool():
    return CinePool([moving_disc_cine(n_frames=10, size=64, seed=s) for s in range(3)])


def test_training_grows_a_refiner_onto_weights_without_one(tmp_path):
    """refine_dim on weights without a refiner: the network starts as those weights, the refiner's
    parameters get their own learning rate (lr_new) and gradients, and the run's final weights carry
    it; without refine_dim the weights are fine-tuned as they are; weights whose refiner differs
    from refine_dim are refused, naming the file."""
    init = tmp_path / "init.pth"
    save_checkpoint(randomised_model(COMPACT_ARCH, seed=2), init)
    cfg = TrainConfig(arch="compact", init=str(init), refine_dim=8, steps=3, batch=2, crop=64, max_skip=3,
                      objects=2, lr=1e-5, lr_new=1e-3, window=7, out=str(tmp_path / "run"), log_every=1,
                      checkpoint_every=2, seed=0, bootstrap_start=1, bootstrap_end=3)
    net, new = build_model(cfg)
    assert net.arch.refine_dim == 8 and sorted(new) == sorted(n for n, _ in net.refiner.named_parameters(prefix="refiner"))
    assert lr_at(cfg, 0, new=True) == 1e-3 and lr_at(cfg, 0) == 1e-5
    # the refiner gets a gradient through the triplet's forward pass
    samples = [_pool().sample(np.random.default_rng(i), 64, 3, 2) for i in range(2)]
    frames, labels, selector = collate(samples, 2)
    logits = forward_triplet(net, frames, labels, selector, 7)
    torch.nn.functional.cross_entropy(logits[1], labels[:, 2]).backward()
    assert net.refiner.out.weight.grad.abs().sum() > 0
    train(cfg, pool=_pool(), log=lambda *a: None)
    final = load_model(tmp_path / "run" / "final.pth")
    assert final.arch == COMPACT_REFINE_ARCH
    assert final.refiner.out.weight.abs().sum() > 0  # learnt from zero
    # a config that does not name refine_dim fine-tunes weights as they are, refiner included
    again, new = build_model(replace(cfg, init=str(tmp_path / "run" / "final.pth"), refine_dim=None))
    assert again.arch == COMPACT_REFINE_ARCH and new == []
    assert torch.equal(again.refiner.out.weight, final.refiner.out.weight)
    bad = replace(cfg, init=str(tmp_path / "run" / "final.pth"), refine_dim=4)
    with pytest.raises(FsvosInputError, match="final.pth.*refine_dim 4 differs"):
        build_model(bad)
