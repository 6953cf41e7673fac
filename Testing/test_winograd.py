"""Winograd F(4x4, 3x3) convolutions: the transforms, the convolution against float64 direct
convolution, where they are used, and the propagator's probabilities against the direct path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import moving_disc_cine
from fsvos import Propagator
from fsvos.model import winograd as W
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
def test_winograd_convolution_equals_direct_convolution(shape, channels_last):
    torch.manual_seed(1)
    b, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64)
    weight = torch.randn(144, c, 3, 3, dtype=torch.float64) / (9 * c) ** 0.5
    bias = torch.randn(144, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, padding=1)
    xf = x.float().contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    u = W.winograd_weight(weight.float())
    for chunk in (W.CHUNK_BYTES, 1):  # one chunk, or one row of tiles at a time
        y = W.winograd_conv3x3(xf, u, bias.float(), chunk_bytes=chunk)
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    # the same restricted to some input channels (the shared / per-object halves of a concatenation)
    part = W.winograd_conv3x3(xf[:, 32:96], u[:, 32:96], None)
    want = F.conv2d(x[:, 32:96], weight[:, 32:96], None, padding=1)
    assert (part.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_winograd_module_swaps_only_eligible_convolutions_and_falls_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.Conv2d(128, 128, 3, stride=2, padding=1),
                        nn.Conv2d(64, 128, 3, padding=1), nn.Conv2d(128, 128, 1),
                        nn.Sequential(nn.Conv2d(256, 256, 3, padding=1)))
    direct = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert W.enable_winograd(net, exclude=[net[4]]) == 1  # stride 2, 64 channels, 1x1, excluded: direct
    conv = net[0]
    assert isinstance(conv, W.WinogradConv2d) and conv.weight is direct[0].weight
    assert [type(m) for m in net.modules() if isinstance(m, nn.Conv2d)] == [W.WinogradConv2d] + [nn.Conv2d] * 4
    x = torch.randn(2, 128, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-5)
        assert conv.uses_winograd(x)
        assert not conv.uses_winograd(x[..., :8, :8])  # below MIN_POSITIONS: direct
        assert not conv.uses_winograd(x.bfloat16())
    assert not conv.uses_winograd(x)  # training (autograd on): the direct conv
    # conv_split of a Winograd conv: the convolution of the concatenation
    x_obj, x_shared = torch.randn(3, 48, 16, 16), torch.randn(1, 80, 16, 16)
    with torch.no_grad():
        want = F.conv2d(torch.cat([x_obj, x_shared.expand(3, -1, -1, -1)], 1), conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv_split(conv, x_obj, x_shared), want, rtol=1e-4, atol=1e-5)


def test_propagator_with_winograd_stays_within_1e4_of_the_direct_path(xravos_model):
    frames, truth = moving_disc_cine(n_frames=5, size=256, radius=30, step=6)  # 1/16 maps of 16x16: all wide convs
    direct = Propagator(xravos_model, precision="fp32", keep_probs=True, winograd=False)
    fast = Propagator(xravos_model, precision="fp32", keep_probs=True)
    assert direct.winograd_convs == 0 and fast.winograd_convs > 10  # key encoder and decoder, fp32 default
    a = direct.propagate(frames, {0: truth[0]})
    b = fast.propagate(frames, {0: truth[0]})
    assert np.abs(a.probs - b.probs).max() <= 1e-4
    assert Propagator(xravos_model, precision="bf16").winograd_convs == 0
    # the caller's model and the value encoder keep direct convolutions
    assert not any(isinstance(m, W.WinogradConv2d) for m in xravos_model.modules())
    assert not any(isinstance(m, W.WinogradConv2d) for m in fast.model.value_encoder.modules())
    assert isinstance(fast.model.decoder.up_8_4.skip_conv, W.WinogradConv2d)


def test_folded_copy_keeps_its_own_winograd_weights(xravos_model):
    """The transformed weight is made from the inference copy's folded weight."""
    fast = Propagator(xravos_model, precision="fp32")
    conv = fast.model.key_encoder.layer3[1].conv2
    assert isinstance(conv, W.WinogradConv2d)
    folded = fold_batchnorm(xravos_model).key_encoder.layer3[1].conv2.weight
    torch.testing.assert_close(conv.winograd_u, W.winograd_weight(folded))
