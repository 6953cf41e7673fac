"""The decoder's compiled steps (skip + bilinear x2 upsampling in one pass; the last convolution to
one logit) against torch's operations, and the decoder's inference path (these steps, the ReLUs and
residuals fused into Winograd convolutions) against the plain STCN decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsvos.inference.propagator import Propagator
from fsvos.model import decoder_kernels as D
from fsvos.model.network import COMPACT_ARCH, XRAVOS_ARCH, FSVOSNet

pytestmark = pytest.mark.skipif(not D.available(), reason="numba not installed")


def _upsampled_sum(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return skip.double() + F.interpolate(up.double(), scale_factor=2, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("skip_batch", [1, 3])
def test_upsample_add_equals_torch_interpolation_plus_skip(dtype, skip_batch, monkeypatch):
    """Odd sizes (both borders clamp), channels-last and plain inputs, one skip map for all images
    or one each; float32 within float rounding of the float64 result, bfloat16 within one rounding
    (computed in float32, rounded once); one thread gives bitwise the threads' result."""
    torch.manual_seed(0)
    up = torch.randn(3, 40, 5, 7).to(dtype)
    skip = torch.randn(skip_batch, 40, 10, 14).to(dtype)
    want = _upsampled_sum(skip, up)
    for fmt in (torch.channels_last, torch.contiguous_format):
        got = D.upsample_add(skip.contiguous(memory_format=fmt), up.contiguous(memory_format=fmt))
        assert got.shape == (3, 40, 10, 14) and got.dtype == dtype
        assert got.is_contiguous(memory_format=torch.channels_last)
        tol = 1e-6 if dtype == torch.float32 else 2 ** -8
        assert ((got.double() - want).abs() <= tol * (want.abs() + 1)).all()
    monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
    assert torch.equal(D.upsample_add(skip, up), got)
    with pytest.raises(ValueError, match="does not fit"):
        D.upsample_add(skip[:, :, :9], up)
    with pytest.raises(ValueError, match="does not fit"):
        D.upsample_add(skip.float() if dtype == torch.bfloat16 else skip.bfloat16(), up)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [48, 16])  # read pixel-major / planar (PLANAR_MAX_CHANNELS)
@pytest.mark.parametrize("width", [13, 2, 1])
def test_conv_to_one_channel_equals_conv2d(dtype, channels, width, monkeypatch):
    """The decoder's last convolution (C -> 1 logit, 3x3, zero padding), float32 output whatever the
    input: within float32 rounding of the float64 convolution of the same (bf16-exact) values; maps
    down to one column (both borders in one tap)."""
    assert (channels <= D.PLANAR_MAX_CHANNELS) == (channels == 16)
    torch.manual_seed(1)
    x = torch.randn(2, channels, 11, width).relu().to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(1, channels, 3, 3) / 20).to(dtype)
    bias = torch.randn(1).to(dtype)
    want = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    got = D.conv3x3_to_one(x, weight, bias)
    assert got.shape == (2, 1, 11, width) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= 1e-5 * (want.abs().max())).all()
    no_bias = D.conv3x3_to_one(x, weight, None)
    assert torch.allclose(no_bias.double(), want - bias.double(), atol=1e-5 * want.abs().max().item())
    assert torch.equal(D.conv3x3_to_one(x.contiguous(), weight, bias), got)  # either layout in
    monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
    assert torch.equal(D.conv3x3_to_one(x, weight, bias), got)
    with pytest.raises(ValueError, match="does not fit"):
        D.conv3x3_to_one(x[:, :channels - 8], weight, bias)


@pytest.mark.parametrize("shape", [(3, 1, 9, 7), (2, 2, 1, 5), (1, 1, 4, 1)])
def test_upsample4_equals_torch_interpolation(shape, monkeypatch):
    """The decoder's final x4 bilinear upsampling of the float32 logits: torch's weights (borders
    clamped, maps down to one row or column), within float32 rounding of torch's result; plain and
    channels-last inputs; one thread gives bitwise the threads' result."""
    torch.manual_seed(3)
    x = torch.randn(*shape) * 8
    want = F.interpolate(x.double(), scale_factor=4, mode="bilinear", align_corners=False)
    got = D.upsample4(x)
    assert got.shape == want.shape and got.dtype == torch.float32 and got.is_contiguous()
    assert ((got.double() - want).abs() <= 1e-6 * (want.abs() + 1)).all()
    assert torch.equal(D.upsample4(x.contiguous(memory_format=torch.channels_last)), got)
    monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
    assert torch.equal(D.upsample4(x), got)
    with pytest.raises(ValueError, match="float32"):
        D.upsample4(x.bfloat16())


def test_compiled_steps_apply_only_to_cpu_inference(monkeypatch):
    x = torch.zeros(1, 2, 4, 4)
    with torch.no_grad():
        assert D.applies(x) and D.applies(x.bfloat16()) and not D.applies(x.half())
    assert not D.applies(x)  # autograd on: training runs torch's operations
    monkeypatch.setenv("FSVOS_FUSED_DECODER", "0")
    with torch.no_grad():
        assert not D.applies(x)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["xravos", "compact"])
def test_inference_decoder_equals_the_plain_decoder(precision, arch, monkeypatch):
    """The decoder as the propagator runs it gives the probabilities of the plain STCN decoder on
    the concatenated input within float32 rounding (fp32) or bf16 rounding (bf16); the same with
    the compiled steps turned off (FSVOS_FUSED_DECODER=0).  The paper's: a BatchNorm-free inference
    copy with shared skip convolutions, Winograd convolutions with their ReLUs and residuals fused,
    the compiled upsampling sums, last convolution and x4 upsampling.  The compact default's: a
    Winograd ``compress`` (96 channels) with its identity skip added in two parts (no
    concatenation), plain convolutions in the 32- and 16-channel stages, the last convolution
    reading its 16 channels planar."""
    torch.manual_seed(2)
    net = FSVOSNet(XRAVOS_ARCH if arch == "xravos" else COMPACT_ARCH).eval()
    fast = Propagator(net, precision=precision).model  # the inference copy (Winograd where wide)
    winograd = {name for name, m in fast.decoder.named_modules() if type(m).__name__ == "WinogradConv2d"}
    assert "compress.conv1" in winograd and ("up_8_4.out_conv.conv1" in winograd) == (arch == "xravos")
    dt = torch.float32 if precision == "fp32" else torch.bfloat16
    cl = torch.channels_last
    # 1/16 maps of 16 x 16 (a 256-px frame): every decoder conv of the paper's is wide enough for Winograd
    a = net.arch
    readout = torch.randn(3, a.value_dim, 16, 16).relu()
    thin = torch.randn(1, a.thin_dim, 16, 16)
    f8 = torch.randn(1, net.decoder.up_16_8.skip_conv.in_channels, 32, 32).relu()
    f4 = torch.randn(1, net.decoder.up_8_4.skip_conv.in_channels, 64, 64).relu()
    with torch.no_grad():
        want = torch.sigmoid(net.decoder(torch.cat([readout, thin.expand(3, -1, -1, -1)], 1),
                                         f8.expand(3, -1, -1, -1), f4.expand(3, -1, -1, -1)))
        args = [t.to(dt).contiguous(memory_format=cl) for t in (readout, thin, f8, f4)]
        got = fast.decode(*args)
        monkeypatch.setenv("FSVOS_FUSED_DECODER", "0")
        torch_steps = fast.decode(*args)
    assert got.shape == want.shape == (3, 1, 256, 256) and got.dtype == torch.float32
    tol = 1e-5 if precision == "fp32" else 5e-2
    assert (got - want).abs().max() < tol
    assert (torch_steps - want).abs().max() < tol
    assert (got - torch_steps).abs().max() < (1e-6 if precision == "fp32" else 2e-2)
