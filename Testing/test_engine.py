"""Properties of the propagation engine (real torch models, no mocks)."""

from __future__ import annotations

import math
import copy
import os
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import moving_disc_cine
from fsvos import FsvosCancelled, FsvosInputError, Propagator
from fsvos.inference.matching import WindowGrid, global_affinity, local_affinity, readout, selection_keys
from fsvos.inference.memory import MemoryBank
from fsvos.inference.propagator import confidence_of
from xravos_oracle import reference_probs


def test_support_frame_comes_back_exactly(compact_model, disc_cine):
    frames, truth = disc_cine
    p = Propagator(compact_model, keep_probs=True, window=7)
    r = p.propagate(frames, {3: truth[3]})
    assert np.array_equal(r.labels[3], truth[3])
    assert r.probs.shape == (3, 8, 64, 64) and r.probs.dtype == np.float32
    assert r.labels.dtype == np.uint8 and r.labels.shape == (8, 64, 64)
    assert r.confidence.shape == (8, 2) and np.all(r.confidence[3] == 1)
    assert np.all((r.confidence >= 0) & (r.confidence <= 1))
    np.testing.assert_allclose(r.probs.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(np.delete(r.labels, 3, 0), np.delete(r.probs.argmax(0), 3, 0))


def test_matches_released_xravos_inference(xravos_model):
    """local + fixed reference, top-20, forward from frame 0 == the released InferenceCore semantics."""
    frames, truth = moving_disc_cine(n_frames=9, size=80)
    for window, r in ((7, 3), (15, 1)):
        ref = reference_probs(xravos_model, frames, truth[0], window=window, mem_every=r)
        ours = Propagator(xravos_model, keep_probs=True, matching="local", reference="fixed", window=window, top_k=20,
                          mem_every=r, include_last=False).propagate(frames, {0: truth[0]}, directions=("forward",))
        assert np.abs(ours.probs - ref).max() < 1e-3
        assert np.abs(ours.probs[:, 1:] - ref[:, 1:]).max() < 1e-4


def _random_keys(t, ck, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, ck, h * w, generator=g), torch.randn(ck, h * w, generator=g)


def test_window_covering_whole_map_equals_global():
    h, w = 5, 6
    mk, q = _random_keys(3, 16, h, w)
    sq = mk.pow(2).sum(1)
    values = torch.randn(3 * h * w, 2 * 8)
    grid = WindowGrid(h, w, 2 * max(h, w) + 1, torch.device("cpu"))
    for top_k in (None, 20, 5):
        g = readout(global_affinity(mk, sq, q, top_k), values)
        loc = readout(local_affinity(mk, sq, q, grid, "fixed", top_k, outside_logit=float("-inf")), values)
        torch.testing.assert_close(loc, g, rtol=1e-5, atol=1e-5)


def test_fixed_and_similarity_agree_when_memory_is_the_query():
    h, w = 6, 7
    _, q = _random_keys(1, 32, h, w, seed=3)
    mk = q[None].clone()
    sq = mk.pow(2).sum(1)
    values = torch.randn(h * w, 4)
    for window in (3, 5):
        grid = WindowGrid(h, w, window, torch.device("cpu"))
        a = readout(local_affinity(mk, sq, q, grid, "fixed", 20), values)
        b = readout(local_affinity(mk, sq, q, grid, "similarity", 20), values)
        torch.testing.assert_close(a, b)


def test_similarity_reference_follows_motion():
    """A memory frame shifted by 2 positions: the similarity window is centred on the moved key."""
    h, w = 8, 8
    g = torch.Generator().manual_seed(0)
    q = torch.randn(16, h, w, generator=g)
    mem = torch.roll(q, shifts=2, dims=2)  # content moved 2 to the right
    mk = mem.reshape(1, 16, -1)
    sq = mk.pow(2).sum(1)
    grid = WindowGrid(h, w, 1, torch.device("cpu"))  # a 1x1 window: only the reference point itself
    aff = local_affinity(mk, sq, q.reshape(16, -1), grid, "similarity", None)
    pos = torch.arange(h * w)
    expected = (pos // w) * w + (pos % w + 2) % w
    assert torch.equal(aff.index[:, 0], expected)
    fixed = local_affinity(mk, sq, q.reshape(16, -1), grid, "fixed", None)
    assert torch.equal(fixed.index[:, 0], pos)


def test_affinity_is_one_softmax_over_all_memory_frames():
    h, w = 4, 4
    mk, q = _random_keys(3, 8, h, w, seed=5)
    sq = mk.pow(2).sum(1)
    grid = WindowGrid(h, w, 3, torch.device("cpu"))
    aff = local_affinity(mk, sq, q, grid, "similarity", None, outside_logit=float("-inf"))
    assert aff.index.shape == (h * w, 3 * 9)
    torch.testing.assert_close(aff.weight.sum(1), torch.ones(h * w))
    top = local_affinity(mk, sq, q, grid, "similarity", 4)
    assert top.index.shape == (h * w, 4)


def _exact_logits64(mk, sq, q, index):
    """s(k, q) in float64 for (M, S) indices into the T*N memory positions."""
    ck = mk.shape[1]
    rows = mk.double().transpose(1, 2).reshape(-1, ck)[index]  # (M, S, C_k)
    return (2 * (rows * q.double().t()[:, None]).sum(-1) - sq.double().reshape(-1)[index]) / ck ** 0.5


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_selection_keeps_near_top_candidates_with_exact_logits(compiled):
    """bf16 mode: centres and top-k chosen on a bf16 similarity, softmax on exact float32 logits
    (local matching: with the torch top-k and with the compiled selection)."""
    h, w, ck, top_k = 8, 8, 64, 6
    mk, q = _random_keys(4, ck, h, w, seed=7)
    mk, q = mk.bfloat16().float(), q.bfloat16().float()  # keys as the bf16 network makes them
    sq = mk.pow(2).sum(1)
    for matching in ("local", "global"):
        if matching == "local":
            grid = WindowGrid(h, w, 5, torch.device("cpu"))
            ref = local_affinity(mk, sq, q, grid, "similarity", None, outside_logit=float("-inf"))
            fast = local_affinity(mk, sq, q, grid, "similarity", top_k, outside_logit=float("-inf"),
                                  select_bf16=True, compiled=compiled)
        else:
            ref = global_affinity(mk, sq, q, None)
            fast = global_affinity(mk, sq, q, top_k, select_bf16=True)
        # every candidate kept is within bf16 rounding of the exact k-th best logit
        all_logits = torch.where(ref.weight > 0, _exact_logits64(mk, sq, q, ref.index), -math.inf)
        kth = all_logits.topk(top_k, dim=1).values[:, -1:]
        kept = _exact_logits64(mk, sq, q, fast.index)
        tol = 2.0 ** -7 * all_logits.clamp_min(-1e3).abs().amax(1, keepdim=True)
        assert torch.all(kept >= kth - 2 * tol), matching
        assert (fast.index.sort(1).values == ref.index.gather(1, all_logits.topk(top_k, dim=1).indices)
                .sort(1).values).all(1).float().mean() > 0.8, matching
        # and the weights are the float32 softmax of the kept candidates' exact logits
        torch.testing.assert_close(fast.weight.double(), torch.softmax(kept, dim=1), rtol=1e-5, atol=1e-6)


def test_dense_and_sparse_readout_agree():
    h, w = 5, 5
    mk, q = _random_keys(4, 8, h, w, seed=2)
    sq = mk.pow(2).sum(1)
    values = torch.randn(4 * h * w, 12)
    grid = WindowGrid(h, w, 5, torch.device("cpu"))
    aff = local_affinity(mk, sq, q, grid, "fixed", None)  # 100 candidates: dense path
    assert aff.index.shape[1] > 64
    dense = readout(aff, values)
    sparse = (aff.weight[:, :, None] * values[aff.index]).sum(1)
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-5)


def test_backward_equals_forward_on_reversed_cine(compact_model, disc_cine):
    frames, truth = disc_cine
    p = Propagator(compact_model, keep_probs=True, window=7, mem_every=2)
    fwd = p.propagate(frames, {0: truth[0]}, directions=("forward",))
    bwd = p.propagate(frames[::-1].copy(), {7: truth[0]}, directions=("backward",))
    np.testing.assert_allclose(bwd.probs[:, ::-1], fwd.probs, atol=1e-5)
    assert np.array_equal(bwd.labels[::-1], fwd.labels)


def test_frame_stats_count_memory_frames_and_time(compact_model, disc_cine):
    frames, truth = disc_cine
    r = Propagator(compact_model, window=7, mem_every=2).propagate(frames, {0: truth[0]}, directions=("forward",))
    stats = r.frame_stats
    assert stats.shape == (7, 3)
    # support 0 in memory; frames 2, 4, 6 become keyframes (every 2 frames), the last frame (7) does not
    assert stats[:, 0].tolist() == [1, 1, 2, 2, 3, 3, 4]
    assert np.all(stats[:, 1] > 0) and np.all(stats[:, 2] > stats[:, 1])


def test_forward_only_leaves_earlier_frames_background(compact_model, disc_cine):
    frames, truth = disc_cine
    r = Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {4: truth[4]}, directions=("forward",))
    assert not r.labels[:4].any()
    assert np.all(r.probs[0, :4] == 1)


def test_determinism(compact_model, disc_cine):
    frames, truth = disc_cine
    a = Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {2: truth[2]})
    b = Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {2: truth[2]})
    assert np.array_equal(a.probs, b.probs)


def test_bf16_runs_and_stays_close(compact_model, disc_cine):
    frames, truth = disc_cine
    a = Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {0: truth[0]})
    b = Propagator(compact_model, keep_probs=True, window=7, precision="bf16").propagate(frames, {0: truth[0]})
    assert np.abs(a.probs - b.probs).max() < 0.15


def test_several_supports_fuse_and_keep_labels(compact_model, disc_cine):
    frames, truth = disc_cine
    r = Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {1: truth[1], 6: truth[6]})
    assert r.supports == [1, 6]
    assert np.array_equal(r.labels[1], truth[1]) and np.array_equal(r.labels[6], truth[6])


def test_global_matching_and_batched_keys_agree(compact_model, disc_cine):
    frames, truth = disc_cine
    one = Propagator(compact_model, keep_probs=True, matching="global", batch_size=1).propagate(frames, {0: truth[0]})
    four = Propagator(compact_model, keep_probs=True, matching="global", batch_size=4).propagate(frames, {0: truth[0]})
    np.testing.assert_allclose(one.probs, four.probs, atol=1e-5)


def test_progress_and_cancel(compact_model, disc_cine):
    frames, truth = disc_cine
    seen = []
    Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {3: truth[3]}, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (7, 7) and [d for d, _ in seen] == list(range(1, 8))
    stop = threading.Event()

    def progress(done, total):
        if done == 2:
            stop.set()

    with pytest.raises(FsvosCancelled):
        Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {0: truth[0]}, progress=progress, cancel=stop)


def test_memory_bank_capacity_keeps_supports():
    bank = MemoryBank(max_frames=3)
    key = torch.zeros(4, 2, 2)
    val = torch.zeros(1, 3, 2, 2)
    bank.add(0, key, val, permanent=True)
    for f in range(1, 6):
        bank.add(f, key + f, val + f)
    assert bank.frames == [0, 4, 5]
    assert bank.keys.shape == (3, 4, 4) and bank.table.shape == (12, 3)
    # slots moved on eviction hold the right data
    by_frame = {e.frame: e.slot for e in bank.entries}
    assert float(bank.keys[by_frame[5]].mean()) == 5.0
    bank.add(6, key + 6, val + 6, temporary=True)
    bank.add(7, key + 7, val + 7, temporary=True)
    assert bank.frames.count(6) == 0 and 7 in bank.frames


def test_memory_bank_selection_keys_follow_every_change():
    """The bf16 GEMM operand the bank keeps per frame stays bit-equal to the one made from its keys
    (through growth, eviction of a moved slot and temporary entries), and matching on it gives
    the same affinity."""
    h, w, ck = 6, 6, 16
    bank = MemoryBank(max_frames=4, selection_keys=True)
    assert MemoryBank(max_frames=4).selection_keys is None
    gen = torch.Generator().manual_seed(3)
    for f in range(9):
        key = torch.randn(ck, h, w, generator=gen)
        bank.add(f, key, torch.randn(2, 8, h, w, generator=gen), permanent=f == 0, temporary=f % 3 == 2)
        made = selection_keys(bank.keys, bank.key_sq)
        assert torch.equal(bank.selection_keys.view(torch.int16), made.view(torch.int16)), f
    assert bank.frames == [0, 6, 7, 8]
    q = torch.randn(ck, h * w, generator=gen)
    grid = WindowGrid(h, w, 3, torch.device("cpu"))
    for compiled in (False, True):
        plain = local_affinity(bank.keys, bank.key_sq, q, grid, "similarity", 5, select_bf16=True, compiled=compiled)
        kept = local_affinity(bank.keys, bank.key_sq, q, grid, "similarity", 5, select_bf16=True, compiled=compiled,
                              sel_keys=bank.selection_keys)
        assert torch.equal(plain.index, kept.index) and torch.equal(plain.weight, kept.weight)
    plain = global_affinity(bank.keys, bank.key_sq, q, 5, select_bf16=True)
    kept = global_affinity(bank.keys, bank.key_sq, q, 5, select_bf16=True, sel_keys=bank.selection_keys)
    assert torch.equal(plain.index, kept.index) and torch.equal(plain.weight, kept.weight)
    with pytest.raises(ValueError, match="selection keys"):
        local_affinity(bank.keys, bank.key_sq, q, grid, "similarity", 5, select_bf16=True,
                       sel_keys=bank.selection_keys[:, :ck])


def test_float_frames_are_windowed(compact_model, disc_cine):
    frames, truth = disc_cine
    as_float = frames.astype(np.float32) * 3.0 + 100.0  # same image, another linear scale
    a = Propagator(compact_model, keep_probs=True, window=7).propagate(frames, {0: truth[0]})
    b = Propagator(compact_model, keep_probs=True, window=7).propagate(as_float, {0: truth[0]})
    lo, hi = frames.min(), frames.max()
    if lo == 0 and hi == 255:
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
    assert b.labels.shape == a.labels.shape


@pytest.mark.parametrize("bad, message", [
    ({}, "at least one support"),
    ({9: np.ones((64, 64), np.uint8)}, "out of range"),
    ({0: np.ones((32, 64), np.uint8)}, "does not match"),
    ({0: np.zeros((64, 64), np.uint8)}, "empty"),
    ({0: np.where(np.eye(64, dtype=bool), 3, 1).astype(np.uint8)}, "without gaps"),
])
def test_bad_supports(compact_model, disc_cine, bad, message):
    frames, _ = disc_cine
    with pytest.raises(FsvosInputError, match=message):
        Propagator(compact_model).propagate(frames, bad)


def test_bad_frames_and_options(compact_model, disc_cine):
    frames, truth = disc_cine
    nan = frames.astype(np.float32)
    nan[2, 3, 3] = np.nan
    with pytest.raises(FsvosInputError, match="NaN"):
        Propagator(compact_model).propagate(nan, {0: truth[0]})
    with pytest.raises(FsvosInputError, match="at least 2 frames"):
        Propagator(compact_model).propagate(frames[:1], {0: truth[0]})
    with pytest.raises(FsvosInputError, match="odd"):
        Propagator(compact_model, window=4)
    with pytest.raises(FsvosInputError, match="matching"):
        Propagator(compact_model, matching="nearest")


def test_labels_and_confidence_do_not_need_the_probabilities(compact_model, disc_cine):
    frames, truth = disc_cine
    supports = {1: truth[1], 6: truth[6]}
    with_probs = Propagator(compact_model, window=7, keep_probs=True).propagate(frames, supports)
    lean = Propagator(compact_model, window=7).propagate(frames, supports)
    assert lean.probs is None and with_probs.probs is not None
    assert np.array_equal(lean.labels, with_probs.labels)
    for f in range(frames.shape[0]):
        expected = confidence_of(with_probs.probs[:, f], with_probs.labels[f])
        np.testing.assert_allclose(lean.confidence[f], expected, atol=1e-5)
        np.testing.assert_allclose(with_probs.confidence[f], expected, atol=1e-5)


def test_channels_last_fast_path_matches_the_plain_fp32_path(compact_model, disc_cine):
    frames, truth = disc_cine
    assert set(np.unique(truth[0])) == {0, 1, 2}  # two objects: the shared half of compress runs
    fast = Propagator(compact_model, window=7, keep_probs=True, channels_last=True).propagate(frames, {0: truth[0]})
    plain_model = copy.deepcopy(compact_model).to(memory_format=torch.contiguous_format)
    plain = Propagator(plain_model, window=7, keep_probs=True, channels_last=False).propagate(frames, {0: truth[0]})
    assert np.abs(fast.probs - plain.probs).max() < 1e-4
    top2 = np.sort(plain.probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-3  # labels may only differ where two classes tie
    assert np.array_equal(fast.labels[clear], plain.labels[clear])


@pytest.mark.parametrize("channels_last", [False, True])
def test_object_shared_network_paths_equal_the_plain_module_forwards(compact_model, channels_last, monkeypatch):
    from fsvos.model import network

    """encode_value / decode run the object-independent convolutions once (split by input channel);
    they must equal the plain per-object forwards on concatenated, expanded inputs."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(compact_model).to(memory_format=fmt)
    g = torch.Generator().manual_seed(3)
    k = 3
    frame = torch.randn(1, 3, 64, 64, generator=g).expand(-1, 3, -1, -1).contiguous(memory_format=fmt)
    masks = torch.rand(k, 1, 64, 64, generator=g)
    with torch.inference_mode():
        _, f16_thin, f16, f8, f4 = model.encode_key(frame)
        others = masks.sum(0, keepdim=True) - masks
        plain_v = model.value_encoder(frame.expand(k, -1, -1, -1), f16.expand(k, -1, -1, -1), masks, others)
        torch.testing.assert_close(model.encode_value(frame, f16, masks), plain_v, rtol=1e-4, atol=1e-4)
        readout_ = torch.randn(k, model.arch.value_dim, 4, 4, generator=g).contiguous(memory_format=fmt)
        plain_p = torch.sigmoid(model.decoder(torch.cat([readout_, f16_thin.expand(k, -1, -1, -1)], 1),
                                              f8.expand(k, -1, -1, -1), f4.expand(k, -1, -1, -1)))
        shared_p = model.decode(readout_, f16_thin, f8, f4)
        monkeypatch.setattr(network, "STAGE4_CHUNK_BYTES", 2 * 32 * 16 * 16 * 4 + 1)  # 1/4 stage: 2 + 1 objects
        chunked_p = model.decode(readout_, f16_thin, f8, f4)
    assert shared_p.dtype == torch.float32
    torch.testing.assert_close(shared_p, plain_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked_p, shared_p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grey_plane_equals_its_three_replicas(compact_model, channels_last, dtype):
    """The engine feeds the grey plane once; the stems' convolutions (key encoder, value encoder's
    image channels) fold the 3 replicas' weights.  Every encoder output must equal the 3-channel
    run's, zero-padded borders and the stride-2 stem included."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(compact_model).to(dtype=dtype, memory_format=fmt)
    g = torch.Generator().manual_seed(5)
    grey = torch.randn(2, 1, 80, 48, generator=g).to(dtype)
    replicas = grey.expand(-1, 3, -1, -1).contiguous(memory_format=fmt)
    masks = torch.rand(3, 1, 80, 48, generator=g).to(dtype).contiguous(memory_format=fmt)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    with torch.inference_mode():
        from_grey, from_rgb = model.encode_key(grey), model.encode_key(replicas)
        for a, b in zip(from_grey, from_rgb):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **tol)
        f16 = from_rgb[2][:1]
        torch.testing.assert_close(model.encode_value(grey[:1], f16, masks),
                                   model.encode_value(replicas[:1], f16, masks), **tol)


def test_grey_weight_follows_the_weight_and_carries_gradients():
    from fsvos.model.blocks import conv_grey
    from fsvos.inference.preprocess import frames_to_input

    conv = torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False)
    grey = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        first = conv_grey(conv, grey, 0, 3, None)
        torch.testing.assert_close(first, conv(grey.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
        conv.weight.mul_(2)  # in place: the cached folded weight must not be reused
        torch.testing.assert_close(conv_grey(conv, grey, 0, 3, None), 2 * first, rtol=1e-5, atol=1e-5)
    conv_grey(conv, grey, 0, 3, None).square().sum().backward()
    folded_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(grey.expand(-1, 3, -1, -1)).square().sum().backward()
    torch.testing.assert_close(folded_grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="single-channel"):
        conv_grey(conv, grey.expand(-1, 3, -1, -1), 0, 3, None)
    # one channel has ambiguous strides (contiguous both ways); in a channels-last network the
    # stem's output must still be channels-last, or oneDNN runs the layers after it in NCHW
    conv = conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = conv_grey(conv, grey, 0, 3, None)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    u8 = torch.randint(0, 256, (2, 30, 20), dtype=torch.uint8)
    one, three = frames_to_input(u8, (0, 0, 1, 1), channels=1), frames_to_input(u8, (0, 0, 1, 1))
    assert one.shape == (2, 1, 32, 20) and torch.equal(three, one.expand(-1, 3, -1, -1))
    assert frames_to_input(u8, (0, 0, 1, 1), memory_format=torch.channels_last, channels=1).stride(1) == 1
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        frames_to_input(u8, (0, 0, 1, 1), channels=2)


def test_blocked_row_argmax_is_torch_argmax_with_first_index_on_ties():
    from fsvos.inference.matching import argmax_rows

    g = torch.Generator().manual_seed(0)
    s = torch.randn(50, 1024, generator=g)
    s[:10] = torch.randint(0, 3, (10, 1024), generator=g).float()  # many ties
    s[10, :] = 1.0  # all equal: index 0
    s[11, 700] = s[11, 40] = 99.0  # two maxima in different blocks: the first
    wide = torch.full((50, 1025), -5.0)
    wide[:, :1024] = s
    for m in (s, wide[:, :1024]):  # contiguous, and rows with a stride (as local matching uses)
        assert torch.equal(argmax_rows(m), s.argmax(dim=1))
    assert argmax_rows(s)[10] == 0 and argmax_rows(s)[11] == 40
    odd = torch.randn(7, 100, generator=g)  # not a multiple of the block: plain argmax
    assert torch.equal(argmax_rows(odd), odd.argmax(dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_max_pool_equals_torch_max_pool(dtype, channels_last):
    import torch.nn.functional as F
    from fsvos.model.resnet import StemMaxPool, max_pool_3x3_s2

    g = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for shape in [(2, 5, 16, 12), (1, 3, 8, 64), (3, 16, 4, 4)]:
        x = torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=fmt)
        x[0, 0, 0, :] = 7.0  # a maximum on the top row and left column (next to the padding)
        x[0, 0, :, 0] = 9.0
        x[-1, -1, -1, -1] = 11.0  # and in the bottom-right corner
        ref = F.max_pool2d(x, 3, stride=2, padding=1)
        out = max_pool_3x3_s2(x)
        assert out.shape == ref.shape and torch.equal(out, ref)
        assert out.is_contiguous(memory_format=fmt)
    pool = StemMaxPool()
    odd = torch.randn(1, 2, 9, 7, generator=g)  # odd sizes: torch's pooling
    assert torch.equal(pool(odd), F.max_pool2d(odd, 3, 2, 1))
    x = torch.randn(1, 2, 8, 8, generator=g, requires_grad=True)  # autograd: torch's pooling
    y = pool(x)
    assert y.grad_fn is not None and "MaxPool" in type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_stem_relu_and_pool_equal_torch(dtype, monkeypatch):
    """The stems' ReLU + 3x3/2 max pool in one compiled pass (integer maxima of the float bit
    patterns): exactly torch's values, for maxima at the borders, windows of negatives only (0)
    and either memory format; one thread the same; autograd runs torch's operations."""
    import torch.nn.functional as F
    from fsvos.model import pool_kernels
    from fsvos.model.resnet import StemMaxPool

    if pool_kernels.numba is None:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(4)
    pool = StemMaxPool()
    for shape in [(2, 5, 16, 12), (1, 64, 8, 6), (3, 16, 2, 2)]:
        x = torch.randn(*shape, generator=g).to(dtype)
        x[0, 0, 0, :] = 7.0  # maxima on the top row and left column (next to the padding)
        x[0, 0, :, 0] = 9.0
        x[-1, -1, -1, -1] = 11.0  # and in the bottom-right corner
        x[-1, 0] = -torch.rand(shape[2:], generator=g).to(dtype) - 0.5  # a map of negatives only
        x[0, -1, 1, 1] = 1e30  # large values: the order of the bit patterns
        want = F.max_pool2d(F.relu(x), 3, stride=2, padding=1)
        assert (want[-1, 0] == 0).all()
        for fmt in (torch.channels_last, torch.contiguous_format):
            with torch.no_grad():
                xf = x.contiguous(memory_format=fmt)
                assert pool_kernels.applies(xf)
                got = pool.after_relu(xf)
            assert got.dtype == dtype and torch.equal(got, want)
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(xf, x)  # the input is not changed
        monkeypatch.setenv("FSVOS_COMPILED_THREADS", "1")
        with torch.no_grad():
            assert torch.equal(pool_kernels.relu_max_pool(x), want)
        monkeypatch.delenv("FSVOS_COMPILED_THREADS")
    with pytest.raises(ValueError, match="even height and width"):
        pool_kernels.relu_max_pool(torch.zeros(1, 2, 5, 4))
    with torch.no_grad():
        assert not pool_kernels.applies(torch.zeros(1, 2, 5, 4))  # odd: torch's pooling
    x = torch.randn(1, 2, 8, 8, generator=g, requires_grad=True)
    y = pool.after_relu(x * 1.0)  # autograd: torch's ReLU and pooling
    assert y.grad_fn is not None and "MaxPool" in type(y.grad_fn).__name__


def test_auto_precision_is_bf16_only_for_bf16_validated_weights_on_native_hardware(compact_model):
    from fsvos.runtime import native_bf16, resolve_precision

    native = native_bf16("cpu")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    validated = {"validated_precisions": ["fp32", "bf16"]}
    assert resolve_precision("fp32", "cpu", validated) == "fp32"
    assert resolve_precision("bf16", "cpu", {}) == "bf16"  # asked for: always
    assert resolve_precision("auto", "cpu", {}) == "fp32"
    assert resolve_precision("auto", "cpu", None) == "fp32"
    assert resolve_precision("auto", "cpu", validated) == ("bf16" if native else "fp32")
    assert Propagator(compact_model).precision == "fp32"  # weights without a bf16 check
    model = copy.deepcopy(compact_model)
    model.fsvos_info = {"meta": validated}
    p = Propagator(model)
    assert p.precision == ("bf16" if native else "fp32")
    assert next(p.model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(FsvosInputError, match="precision must be"):
        Propagator(compact_model, precision="fp16")


def test_work_size_choice():
    from fsvos.inference.propagator import resolve_work_size, working_shape

    assert resolve_work_size("auto", None) == 512  # the paper's datasets and the bundled training: 512 x 512
    assert resolve_work_size("auto", {"work_size": 384}) == 384
    assert resolve_work_size("auto", {"work_size": None}) is None  # trained on user cines: native
    assert resolve_work_size("native") is None and resolve_work_size(None) is None
    assert resolve_work_size("256") == 256 and resolve_work_size(96) == 96
    for bad in ("big", 16, 0, "12.5", 40.5):
        with pytest.raises(FsvosInputError, match="work size"):
            resolve_work_size(bad)
    assert working_shape(1024, 1024, 512) == (512, 512)
    assert working_shape(480, 960, 512) == (256, 512)  # longer side, aspect kept
    assert working_shape(384, 384, 512) == (512, 512)  # a number enlarges too
    assert working_shape(384, 384, 512, enlarge=False) == (384, 384)  # "auto" only shrinks
    assert working_shape(384, 384, None) == (384, 384)


def test_work_size_runs_the_network_smaller_and_returns_the_cine_size(compact_model):
    """A cine twice as large, processed at the small cine's size, gives the small cine's result
    resized; supports come back exactly as painted."""
    frames, truth = moving_disc_cine(n_frames=6, size=64)
    big, big_truth = (a.repeat(2, axis=1).repeat(2, axis=2) for a in (frames, truth))
    small = Propagator(compact_model, keep_probs=True, window=7, work_size="native").propagate(frames, {0: truth[0]})
    p = Propagator(compact_model, keep_probs=True, window=7)
    assert p.work_size == 512 and not p.enlarge  # auto, no metadata: 512, and a 128-px cine stays native
    auto = p.propagate(big, {0: big_truth[0]})
    r = Propagator(compact_model, keep_probs=True, window=7, work_size=64).propagate(big, {0: big_truth[0]})
    assert r.labels.shape == big.shape and r.probs.shape == (3,) + big.shape
    assert np.array_equal(r.labels[0], big_truth[0])
    np.testing.assert_allclose(r.probs.sum(0), 1.0, atol=1e-5)
    up = F.interpolate(torch.from_numpy(small.probs).transpose(0, 1), scale_factor=2, mode="bilinear",
                       align_corners=False).transpose(0, 1).numpy()
    diff = np.abs(r.probs[:, 1:] - up[:, 1:])
    assert diff.mean() < 1e-3 and diff.max() < 0.02, (diff.mean(), diff.max())
    assert np.abs(auto.probs[:, 1:] - up[:, 1:]).mean() > 4 * diff.mean()  # native 128 px is another result
