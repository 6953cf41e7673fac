"""Winograd F(4x4, 3x3) convolutions: the transforms (torch and compiled), the convolution against
float64 direct convolution in float32 and bfloat16, where they are used, and the propagator's
probabilities and logits against the direct path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import moving_disc_cine
from fsvos import Propagator
from fsvos.model import winograd as W
from fsvos.model import winograd_kernels as WK
from fsvos.model.blocks import conv_split
from fsvos.model.fold import fold_batchnorm


def test_toom_cook_matrices_compute_the_correlation_exactly():
    rng = np.random.default_rng(0)
    at, g, bt = (m.numpy() for m in (W._AT, W._G, W._BT))
    assert at.shape == (4, 6) and g.shape == (6, 3) and bt.shape == (6, 6)
    for _ in range(5):
        d, k = rng.standard_normal(6), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ k for i in range(4)])
        np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 128, 16, 20), (1, 160, 13, 18), (3, 128, 5, 7)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_winograd_convolution_equals_direct_convolution(shape, channels_last, fused):
    torch.manual_seed(1)
    b, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64)
    weight = torch.randn(144, c, 3, 3, dtype=torch.float64) / (9 * c) ** 0.5
    bias = torch.randn(144, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, padding=1)
    xf = x.float().contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    u = W.winograd_weight(weight.float())
    # one chunk (all images), one row of tiles at a time, a few rows, chunks spanning two images
    for chunk in (W.CHUNK_BYTES, 1, 300_000, 320_000):
        y = W.winograd_conv3x3(xf, u, bias.float(), chunk_bytes=chunk, fused=fused)
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    # the same restricted to some input channels (the shared / per-object halves of a concatenation)
    part = W.winograd_conv3x3(xf[:, 32:96], u[:, 32:96], None, fused=fused)
    want = F.conv2d(x[:, 32:96], weight[:, 32:96], None, padding=1)
    assert (part.double() - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_winograd_convolution_stays_within_its_rounding_bound(fused):
    """bf16 tiles, weights and products: about 1.7e-2 relative error per layer (direct bf16: 2.9e-3);
    a wrong coefficient or tile gives errors of order 1."""
    torch.manual_seed(2)
    x = torch.randn(2, 192, 19, 22, dtype=torch.float64).relu().bfloat16()  # tiles cut at both edges
    weight = (torch.randn(200, 192, 3, 3, dtype=torch.float64) / (3 * 192 ** 0.5)).bfloat16()
    bias = torch.randn(200, dtype=torch.float64).bfloat16()
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)  # exact on the bf16 inputs
    u = W.winograd_weight(weight)
    assert u.dtype == torch.bfloat16
    xc = x.contiguous(memory_format=torch.channels_last)
    for chunk in (W.CHUNK_BYTES, 1, 300_000):  # 300_000: 3 tile rows, chunks spanning both images
        y = W.winograd_conv3x3(xc, u, bias, chunk_bytes=chunk, fused=fused)
        assert y.dtype == torch.bfloat16 and y.shape == ref.shape
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert ((y.double() - ref).norm() / ref.norm()).item() < 2.5e-2
    with pytest.raises(TypeError, match="must both"):
        W.winograd_conv3x3(xc.float(), u, None)


@pytest.mark.skipif(not WK.available(), reason="numba not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parallel_tile_transforms_equal_one_thread(dtype, monkeypatch):
    """The transforms' tiles cut into ranges on 2 threads (the _parallel kernels; numba runs them on
    as many threads as it has) give bitwise the one-thread tiles and outputs, edge tiles, chunks
    spanning two images and channel counts that are not multiples of 16 included; propagation runs
    them on torch's threads (numba_threads)."""
    torch.manual_seed(4)
    x = torch.randn(2, 19, 22, 40).to(dtype)  # (B, H, W, C) channels-last, tiles cut at both edges
    th, tw = 5, 6
    m = torch.randn(36, 2 * th * tw, 24).to(dtype)
    bias = torch.randn(24)
    res = torch.randn(2, 19, 22, 24).to(dtype)

    def run(relu, residual, parts):
        v = torch.zeros(36, 2 * th * tw, 40, dtype=dtype)
        out = torch.zeros(2, 19, 22, 24, dtype=dtype)
        for bi, t0, nt, start in ((0, 0, th, 0), (1, 0, 2, th * tw), (1, 2, th - 2, (th + 2) * tw)):
            WK.input_transform(x, v, bi, t0, nt, start, relu=relu, parts=parts)
            WK.output_transform(m, bias, out, bi, t0, nt, start, residual=residual, relu=relu, parts=parts)
        return v, out

    for relu, residual in ((False, None), (True, res)):  # plain; ReLUs and a residual
        monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
        one = run(relu, residual, None)  # the one-thread kernels
        monkeypatch.delenv("FSVOS_COMPILED_THREADS")
        for parts in (None, 2, 7):
            got = run(relu, residual, parts)
            assert torch.equal(got[0], one[0]) and torch.equal(got[1], one[1])
        assert (one[1] >= 0).all() == relu
    # through the public functions: one thread (FSVOS_COMPILED_THREADS=1) and the default
    u = W.winograd_weight(torch.randn(40, 48, 3, 3).to(dtype))
    xc = torch.randn(2, 19, 22, 48).to(dtype).permute(0, 3, 1, 2)  # channels-last strides
    bias40 = torch.randn(40).to(dtype)
    default = W.winograd_conv3x3(xc, u, bias40, fused=True)
    monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
    assert torch.equal(W.winograd_conv3x3(xc, u, bias40, fused=True), default)


@pytest.mark.skipif(not WK.available(), reason="numba not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_transforms_equal_the_transform_matrices(dtype):
    """Each tile of the compiled input transform is B^T d B of its zero-padded 6x6 window, and each
    4x4 output A^T M A + bias: checked in float64 against the matrices for channel counts of 16,
    a multiple of 16 and not (the last block overlaps the one before), within one rounding."""
    torch.manual_seed(7)
    bt, at = W._BT, W._AT
    for c in (16, 37, 64):
        x = torch.randn(1, 9, 10, c).to(dtype)
        th, tw = 3, 3
        v = torch.empty(36, th * tw, c, dtype=dtype)
        WK.input_transform(x, v, 0, 0, th)
        xp = torch.zeros(1, 4 * th + 2, 4 * tw + 2, c, dtype=torch.float64)
        xp[:, 1:10, 1:11] = x.double()
        m = torch.randn(36, th * tw, c).to(dtype)
        bias = torch.randn(c)
        out = torch.empty(1, 9, 10, c, dtype=dtype)
        WK.output_transform(m, bias, out, 0, 0, th)
        tol = 1e-5 if dtype == torch.float32 else 2 ** -8
        for i in range(th):
            for j in range(tw):
                d = xp[0, 4 * i:4 * i + 6, 4 * j:4 * j + 6]  # (6, 6, C)
                want = torch.einsum("ka,abc,lb->klc", bt, d, bt).reshape(36, c)
                got = v[:, i * tw + j].double()
                assert ((got - want).abs() <= tol * want.abs().amax(dim=0)).all()
                y = torch.einsum("ka,abc,lb->klc", at, m[:, i * tw + j].double().view(6, 6, c), at) + bias.double()
                rows, cols = min(4, 9 - 4 * i), min(4, 10 - 4 * j)  # the map's edge crops the last tiles
                got = out[0, 4 * i:4 * i + rows, 4 * j:4 * j + cols].double()
                assert ((got - y[:rows, :cols]).abs() <= tol * y.abs().amax()).all()


def test_compiled_transforms_need_16_channels():
    """Fewer than 16 input or output channels: the torch transforms by default, an error when the
    compiled ones are asked for (they work on blocks of 16 channels)."""
    torch.manual_seed(8)
    x = torch.randn(1, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(24, 8, 3, 3) / 9
    u = W.winograd_weight(weight)
    y = W.winograd_conv3x3(x, u, None)
    assert (y - F.conv2d(x, weight, None, padding=1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="16"):
        W.winograd_conv3x3(x, u, None, fused=True)
    with pytest.raises(ValueError, match="16 channels"):
        WK.input_transform(x.permute(0, 2, 3, 1), torch.empty(36, 9, 8), 0, 0, 3)


@pytest.mark.skipif(not WK.available(), reason="numba not installed")
def test_compiled_transforms_refuse_chunks_outside_their_arrays():
    """The kernels write through raw addresses: a chunk that does not fit its arrays is an error,
    not a write past them."""
    x = torch.zeros(2, 9, 10, 16)  # 3 x 3 tiles per image
    v = torch.zeros(36, 9, 16)
    out = torch.zeros(2, 9, 10, 16)
    for b, t0, nt, start in ((2, 0, 1, 0), (0, 2, 2, 0), (0, 0, 3, 1), (0, -1, 1, 0)):
        with pytest.raises(ValueError, match="do not fit"):
            WK.input_transform(x, v, b, t0, nt, start)
        with pytest.raises(ValueError, match="do not fit"):
            WK.output_transform(v, torch.zeros(16), out, b, t0, nt, start)
    with pytest.raises(ValueError, match="contiguous channels"):
        WK.input_transform(x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1), v, 0, 0, 3)
    with pytest.raises(ValueError, match="does not fit"):
        WK.output_transform(v, torch.zeros(16), out, 0, 0, 3, residual=torch.zeros(3, 9, 10, 16))
    WK.input_transform(x, v, 1, 0, 3)  # the whole of image 1 fits


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relus_and_residual_inside_the_convolution_equal_the_separate_operations(dtype, fused):
    """relu(conv(relu(x)) + residual): float32 bitwise the separate torch operations, bfloat16 within
    one rounding of them (the sum is rounded once instead of twice); a residual of batch 1 is added
    to every image; each part on its own too."""
    torch.manual_seed(5)
    x = torch.randn(2, 128, 19, 22).to(dtype).contiguous(memory_format=torch.channels_last)
    u = W.winograd_weight((torch.randn(144, 128, 3, 3) / 34).to(dtype))
    bias = torch.randn(144)
    for res_batch in (2, 1):
        res = torch.randn(res_batch, 144, 19, 22).to(dtype).contiguous(memory_format=torch.channels_last)
        for relu_input, residual, relu_output in ((True, res, True), (True, None, False), (False, res, False),
                                                  (False, None, True)):
            want = W.winograd_conv3x3(F.relu(x) if relu_input else x, u, bias, fused=fused)
            if residual is not None:
                want = want + residual
            if relu_output:
                want = F.relu(want)
            got = W.winograd_conv3x3(x, u, bias, fused=fused, relu_input=relu_input, residual=residual,
                                     relu_output=relu_output)
            assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
            if dtype == torch.float32 or not fused or residual is None:
                assert torch.equal(got, want)
            else:
                # the separate sum rounds the convolution first: error up to 2^-9 of |conv| <= |sum| + |res|
                bound = 2 ** -7 * (want.float().abs() + residual.float().abs())
                assert ((got.float() - want.float()).abs() <= bound).all()
                assert not torch.equal(got, want)  # rounded once: some values differ
            if relu_output:
                assert (got >= 0).all()
    assert torch.equal(x, x.clone())  # the input is read, not changed
    with pytest.raises(ValueError, match="does not fit"):
        W.winograd_conv3x3(x, u, bias, residual=torch.zeros(3, 144, 19, 22, dtype=dtype))


def test_compiled_output_transform_rounds_bf16_as_torch_does():
    """Integer tile products: A^T M A + bias is exact in float32, and many results are ties between
    two bf16 values (e.g. 257 between 256 and 258), which must round to even as torch rounds."""
    g = torch.Generator().manual_seed(3)
    m = torch.randint(-256, 257, (36, 6, 40), generator=g).float()  # 2 x 3 tiles, 40 channels; exact in bf16
    bias = torch.randint(-50, 50, (40,), generator=g).float()
    y = torch.mm(W._AT, m.double().view(6, -1)).view(4, 6, -1)
    y = torch.matmul(W._AT, y).view(4, 4, 2, 3, 40).permute(2, 0, 3, 1, 4).reshape(8, 12, 40) + bias.double()
    assert torch.equal(y, y.float().double())  # exact in float32
    out = torch.empty(1, 8, 12, 40, dtype=torch.bfloat16)
    WK.output_transform(m.bfloat16(), bias, out, 0, 0, 2)
    assert torch.equal(out[0].view(torch.int16), y.bfloat16().view(torch.int16))
    rounded = y.bfloat16().double()
    assert (rounded != y).sum() > 100  # many values were rounded ...
    ulp = torch.ldexp(torch.ones_like(y), torch.frexp(y.abs())[1] - 8)  # bf16's spacing at |y|
    assert ((y / ulp).frac().abs() == 0.5).sum() > 10  # ... and some were ties


def test_compiled_transforms_can_be_turned_off(monkeypatch):
    assert WK.available()
    monkeypatch.setenv("FSVOS_FUSED_WINOGRAD", "0")
    assert not WK.available()


def test_winograd_module_swaps_only_eligible_convolutions_and_falls_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.Conv2d(128, 128, 3, stride=2, padding=1),
                        nn.Conv2d(48, 128, 3, padding=1), nn.Conv2d(128, 128, 1),
                        nn.Sequential(nn.Conv2d(256, 256, 3, padding=1)))
    direct = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert W.enable_winograd(net, exclude=[net[4]]) == 1  # stride 2, 48 channels, 1x1, excluded: direct
    conv = net[0]
    assert isinstance(conv, W.WinogradConv2d) and conv.weight is direct[0].weight
    assert [type(m) for m in net.modules() if isinstance(m, nn.Conv2d)] == [W.WinogradConv2d] + [nn.Conv2d] * 4
    x = torch.randn(2, 128, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-5)
        assert conv.uses_winograd(x)
        assert not conv.uses_winograd(x[..., :8, :8])  # below MIN_POSITIONS: direct
        assert not conv.uses_winograd(x.bfloat16())  # not the weight's dtype
    assert not conv.uses_winograd(x)  # training (autograd on): the direct conv
    # bf16 weights: Winograd from 64 channels too (32 gained nothing here)
    net16 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(64, 96, 3, padding=1)).bfloat16()
    assert W.enable_winograd(net16) == 1 and isinstance(net16[1], W.WinogradConv2d)
    assert net16[1].winograd_u.dtype == torch.bfloat16
    with torch.no_grad():
        assert net16[1].uses_winograd(torch.randn(1, 64, 16, 16).bfloat16())
    # conv_split of a Winograd conv: the convolution of the concatenation
    x_obj, x_shared = torch.randn(3, 48, 16, 16), torch.randn(1, 80, 16, 16)
    with torch.no_grad():
        want = F.conv2d(torch.cat([x_obj, x_shared.expand(3, -1, -1, -1)], 1), conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv_split(conv, x_obj, x_shared), want, rtol=1e-4, atol=1e-5)


def test_propagator_with_winograd_stays_within_1e4_of_the_direct_path(xravos_model, compact_model):
    """The arithmetic is compared with each local window centred on the query position: the
    paper's centre, the most similar memory key (an argmax), may flip between two near-equal keys
    of this random network on rounding differences of 1e-6, which moves a whole window."""
    frames, truth = moving_disc_cine(n_frames=5, size=256, radius=30, step=6)  # 1/16 maps of 16x16: all wide convs
    direct = Propagator(xravos_model, precision="fp32", keep_probs=True, winograd=False, reference="fixed")
    fast = Propagator(xravos_model, precision="fp32", keep_probs=True, reference="fixed")
    assert direct.winograd_convs == 0 and fast.winograd_convs > 10  # key encoder and decoder, fp32 default
    a = direct.propagate(frames, {0: truth[0]})
    b = fast.propagate(frames, {0: truth[0]})
    assert np.abs(a.probs - b.probs).max() <= 1e-4
    # the paper's window centres: the labels agree but where a flipped centre moved a window
    a = Propagator(xravos_model, precision="fp32", winograd=False).propagate(frames, {0: truth[0]})
    b = Propagator(xravos_model, precision="fp32").propagate(frames, {0: truth[0]})
    assert (a.labels == b.labels).mean() > 0.995
    # the caller's model keeps direct convolutions; the inference copy's value encoder, trunk and
    # fuser, runs Winograd
    assert not any(isinstance(m, W.WinogradConv2d) for m in xravos_model.modules())
    assert isinstance(fast.model.value_encoder.fuser.block2.conv2, W.WinogradConv2d)
    assert isinstance(fast.model.value_encoder.layer3[0].conv2, W.WinogradConv2d)
    # the bundled default's narrow fuser stays direct in fp32 (Winograd was slower there), not in bf16
    fuser = [Propagator(compact_model, precision=p).model.value_encoder.fuser for p in ("fp32", "bf16")]
    assert not any(isinstance(m, W.WinogradConv2d) for m in fuser[0].modules())
    assert isinstance(fuser[1].block2.conv2, W.WinogradConv2d)
    assert isinstance(fast.model.decoder.up_8_4.skip_conv, W.WinogradConv2d)


def test_split_convolutions_read_views_of_the_fp32_transformed_weights(xravos_model):
    """Convolutions split into per-object and shared input channels (the value encoder's fuser, the
    decoder's compress) read slices of the transformed weight: views in fp32 (no copy: 324 MB for
    the paper's network), cached copies in bf16 (faster there)."""
    frames, truth = moving_disc_cine(n_frames=3, size=256, radius=30, step=6)

    def slices(precision):
        p = Propagator(xravos_model, precision=precision)
        p.propagate(frames, {0: truth[0]})
        return [k for m in p.model.modules() for k in m.__dict__.get("_fsvos_slices", {}) if k[0] == "winograd_u"]

    assert slices("fp32") == []
    assert len(slices("bf16")) == 8  # fuser block1 conv1 and downsample, compress conv1 and downsample, 2 parts each


def test_folded_copy_keeps_its_own_winograd_weights(xravos_model):
    """The transformed weight is made from the inference copy's folded weight."""
    fast = Propagator(xravos_model, precision="fp32")
    conv = fast.model.key_encoder.layer3[1].conv2
    assert isinstance(conv, W.WinogradConv2d)
    folded = fold_batchnorm(xravos_model).key_encoder.layer3[1].conv2.weight
    torch.testing.assert_close(conv.winograd_u, W.winograd_weight(folded))


def test_bf16_propagator_runs_the_paper_network_wide_convs_as_winograd(xravos_model, compact_model):
    """bf16 on the CPU: Winograd on the 64+-channel convs (the paper's key encoder, value encoder and
    decoder; the compact model's key encoder layers 2-3 and ``compress``, its 16- and 32-channel
    decoder stages direct); the decoder's logits stay within the bf16 Winograd rounding of the
    fp32 reference (direct bf16: about 0.9%, Winograd bf16: about 2%)."""
    fast = Propagator(xravos_model, precision="bf16")
    direct = Propagator(xravos_model, precision="bf16", winograd=False)
    ref = Propagator(xravos_model, precision="fp32", winograd=False)
    assert fast.winograd_convs > 10 and direct.winograd_convs == 0
    assert isinstance(fast.model.decoder.up_8_4.out_conv.conv1, W.WinogradConv2d)
    compact = Propagator(compact_model, precision="bf16").model
    assert isinstance(compact.decoder.compress.conv1, W.WinogradConv2d)
    assert isinstance(compact.key_encoder.layer3[0].conv2, W.WinogradConv2d)
    assert not isinstance(compact.decoder.up_8_4.out_conv.conv1, W.WinogradConv2d)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 256, 256, generator=g)
    readout = torch.randn(2, 512, 16, 16, generator=g)

    def logits(p):
        with torch.inference_mode():
            _, f16_thin, _, f8, f4 = p.model.encode_key(p._net(image))
            return p.model.decoder.forward_shared(p._net(readout), f16_thin, f8, f4).double()

    want = logits(ref)
    for p, bound in ((direct, 2e-2), (fast, 4e-2)):
        assert ((logits(p) - want).norm() / want.norm()).item() < bound
    # in bf16 the value encoder's fuser runs as Winograd too (its transformed weights take half the
    # memory they would in fp32); a propagation through both encoders stays near the fp32 one
    assert isinstance(fast.model.value_encoder.fuser.block1.conv1, W.WinogradConv2d)
    frames, truth = moving_disc_cine(n_frames=4, size=256, radius=30, step=6)
    probs = [Propagator(xravos_model, precision=prec, keep_probs=True, winograd=wino).propagate(frames, {0: truth[0]}).probs
             for prec, wino in (("fp32", False), ("bf16", False), ("bf16", None))]
    assert np.abs(probs[1] - probs[0]).max() < 5e-3 and np.abs(probs[2] - probs[0]).max() < 5e-3
