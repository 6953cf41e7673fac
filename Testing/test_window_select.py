"""The compiled local-window selection (numba) against the torch path it replaces."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsvos.inference import window_select
from fsvos.numba_threads import threads
from fsvos.inference.matching import WindowGrid, _bf16_operands, exact_logits, local_affinity, readout
from fsvos.inference.memory import MemoryBank
from fsvos.inference.propagator import Propagator

pytestmark = pytest.mark.skipif(not window_select.available(), reason="numba not installed")


def _moving_keys(t, ck, h, w, seed=0):
    """Spatially smooth keys drifting frame to frame, as a network makes them (the windows' logits
    peak near the centre, so the best-first segment order and its early stop are exercised)."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, ck, h, w, generator=g), 3, 1, 1)[0] * 3
    mem = torch.stack([torch.roll(base, (i % 3 - 1, i), (1, 2)) + 0.3 * torch.randn(ck, h, w, generator=g)
                       for i in range(t)]).reshape(t, ck, h * w)
    q = (base + 0.3 * torch.randn(ck, h, w, generator=g)).reshape(ck, h * w)
    return mem, q


def _dense(aff, positions):
    """(M, T*N) weights: compares affinities whatever the order of their candidates."""
    return torch.zeros(aff.index.shape[0], positions).scatter_add_(1, aff.index, aff.weight)


@pytest.mark.parametrize("reference", ["similarity", "fixed"])
@pytest.mark.parametrize("outside_logit", [-1.0, float("-inf"), 50.0])
@pytest.mark.parametrize("shape", [(9, 12, 5, 3, 20), (6, 5, 7, 2, 11), (4, 4, 9, 1, 3), (10, 10, 15, 4, 40),
                                   (20, 18, 15, 3, 20)])
def test_compiled_selection_equals_torch_topk(reference, outside_logit, shape):
    """fp32: same top-k candidates and weights as gathering every window logit for torch.topk, for
    windows clipped at the borders, windows larger than the map, and outside slots that win."""
    h, w, window, t, top_k = shape
    mk, q = _moving_keys(t, 16, h, w, seed=h * w + t)
    sq = mk.pow(2).sum(1)
    grid = WindowGrid(h, w, window, torch.device("cpu"))
    ref = local_affinity(mk, sq, q, grid, reference, top_k, outside_logit=outside_logit, compiled=False)
    new = local_affinity(mk, sq, q, grid, reference, top_k, outside_logit=outside_logit, compiled=True)
    assert new.index.shape == ref.index.shape == (h * w, top_k) and new.index.dtype == torch.long
    torch.testing.assert_close(_dense(new, t * h * w), _dense(ref, t * h * w), rtol=0, atol=1e-6)
    values = torch.randn(t * h * w, 6)
    torch.testing.assert_close(readout(new, values), readout(ref, values), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference", ["similarity", "fixed"])
@pytest.mark.parametrize("shape", [(16, 20, 15, 8, 20), (9, 12, 5, 3, 20), (7, 6, 9, 2, 10)])
def test_compiled_bf16_selection_reads_the_bf16_similarity(reference, shape):
    """bf16 mode: the kernel reads the bf16 GEMM output as uint16 bits.  Per query it keeps the
    same multiset of bf16 logits as torch.topk on a float32 copy (bf16 ties may pick other
    positions), then weights the kept candidates by the softmax of their exact float32 logits."""
    h, w, window, t, top_k = shape
    mk, q = _moving_keys(t, 64, h, w, seed=3 * h + w)
    sq = mk.pow(2).sum(1)
    grid = WindowGrid(h, w, window, torch.device("cpu"))
    ref = local_affinity(mk, sq, q, grid, reference, top_k, select_bf16=True, compiled=False)
    new = local_affinity(mk, sq, q, grid, reference, top_k, select_bf16=True, compiled=True)
    # the bf16 similarity both paths select on, with the outside slots' logit (-1) in column T*N
    sel_keys, q_ext = _bf16_operands(mk, sq, q.t().contiguous())
    s16 = torch.cat([torch.mm(q_ext, sel_keys[i]) for i in range(t)] + [torch.full((h * w, 1), -1.0).bfloat16()], 1)

    def kept_values(aff):
        outside = aff.weight == 0  # outside slots: weight 0, index = their centre
        col = torch.where(outside, torch.full_like(aff.index, t * h * w), aff.index)
        return s16.float().gather(1, col).sort(dim=1).values

    assert torch.equal(kept_values(new), kept_values(ref))
    exact = exact_logits(mk, sq, q.t().contiguous(), new.index, new.weight > 0, -1.0)
    # float32 dot products summed in another order than torch's bmm: terms of about 100 (2 k.q, |k|^2) differ by ~1e-5
    torch.testing.assert_close(new.weight, torch.softmax(exact, 1) * (new.weight > 0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_order_keys_order_as_the_floats(dtype):
    """order_key ranks stored float32 / bf16 values as the floats do (-0.0 just below +0.0) and
    key_value inverts it; the compiled argmax finds the first maximum, as torch.argmax."""
    import numba
    from fsvos.model.numba_bf16 import as_numpy, key_value, order_key

    values = torch.tensor([-float("inf"), -3e38, -2.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, 7.0, 3e38,
                           float("inf")]).to(dtype)
    stored = as_numpy(values)

    @numba.njit
    def keys_and_back(a):
        keys = np.empty(a.shape[0], np.int64)
        back = np.empty(a.shape[0], np.float32)
        for i in range(a.shape[0]):
            keys[i] = order_key(a[i])
            back[i] = key_value(order_key(a[i]), a)
        return keys, back

    keys, back = keys_and_back(stored)
    assert (np.diff(keys) > 0).all()
    np.testing.assert_array_equal(back, values.float().numpy())

    @numba.njit
    def argmax_rows(s, block_key):
        out = np.empty(s.shape[0], np.int64)
        for m in range(s.shape[0]):
            out[m] = window_select._row_argmax(s[m], block_key)[0]
        return out

    g = torch.Generator().manual_seed(5)
    for n in (64, 200, 1024):  # whole blocks, a tail past the last block
        s = (torch.randn(40, n, generator=g) * 4).round().to(dtype)  # many ties
        s[3, n - 1] = 100.0  # the maximum in the tail
        s[4, :] = 2.0  # every value tied
        stored = as_numpy(s)
        block_key = np.empty(n // 64, np.int16 if dtype == torch.bfloat16 else np.int32)
        np.testing.assert_array_equal(argmax_rows(stored, block_key), s.float().argmax(dim=1).numpy())


def test_compiled_selection_on_the_memory_bank_layout():
    """The memory bank stores keys position-major; both paths read its transposed view."""
    h, w, t = 12, 10, 5
    mk, q = _moving_keys(t, 32, h, w, seed=11)
    bank = MemoryBank()
    for i in range(t):
        bank.add(i, mk[i], torch.randn(2, 8, h, w))
    assert torch.equal(bank.keys, mk) and bank.keys.transpose(1, 2).is_contiguous()
    grid = WindowGrid(h, w, 7, torch.device("cpu"))
    ref = local_affinity(mk, mk.pow(2).sum(1), q, grid, "similarity", 20, compiled=False)
    new = local_affinity(bank.keys, bank.key_sq, q, grid, "similarity", 20, compiled=True)
    torch.testing.assert_close(_dense(new, t * h * w), _dense(ref, t * h * w), rtol=0, atol=1e-6)


def test_propagation_is_unchanged_by_the_compiled_selection(compact_model, disc_cine, monkeypatch):
    """The engine's probabilities with and without the compiled selection (fp32) agree."""
    frames, truth = disc_cine
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("FSVOS_FUSED_SELECT", flag)
        p = Propagator(compact_model, keep_probs=True, window=5, top_k=8, precision="fp32")
        runs[flag] = p.propagate(frames, {3: truth[3]}).probs
    assert np.abs(runs["1"] - runs["0"]).max() < 1e-5


_TWO_THREADS = pytest.mark.skipif(window_select.numba is None or window_select.numba.config.NUMBA_NUM_THREADS < 2,
                                  reason="numba has fewer than 2 threads here")


@_TWO_THREADS
@pytest.mark.parametrize("select_bf16", [False, True])
@pytest.mark.parametrize("reference", ["similarity", "fixed"])
@pytest.mark.parametrize("shape", [(32, 32, 15, 8, 20), (9, 12, 5, 3, 20), (3, 5, 3, 2, 4)])
def test_parallel_selection_equals_one_thread(select_bf16, reference, shape):
    """The selection's query rows split over 2 threads (maps larger and smaller than the row
    ranges) give bitwise the one-thread candidates, centres and weights."""
    h, w, window, t, top_k = shape
    mk, q = _moving_keys(t, 64, h, w, seed=h + w + t)
    sq = mk.pow(2).sum(1)
    grid = WindowGrid(h, w, window, torch.device("cpu"))
    one, two = (local_affinity(mk, sq, q, grid, reference, top_k, select_bf16=select_bf16, compiled=True,
                               select_threads=n) for n in (1, 2))
    assert torch.equal(two.index, one.index) and torch.equal(two.weight, one.weight)
    if not select_bf16:  # and the torch path's (bf16 ties may pick other positions: tested above)
        ref = local_affinity(mk, sq, q, grid, reference, top_k, compiled=False)
        torch.testing.assert_close(_dense(two, t * h * w), _dense(ref, t * h * w), rtol=0, atol=1e-6)


def test_selection_threads_is_checked():
    with pytest.raises(ValueError, match="threads must be between 1 and"):
        window_select.WindowSelector(4, 2, 2, 2, 3, -1.0, threads=0)


_THREADS_SCRIPT = r"""
import json, os, sys
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from fsvos.inference import window_select
from fsvos.numba_threads import numba, threads
out = {"threads": threads()}
out["layer"] = numba.threading_layer() if out["threads"] > 1 else None
if sys.argv[2] == "fork":  # a forked child selects on one thread (numba ends a child that uses GNU OpenMP)
    sim = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)  # (M, N), an 8 x 8 map

    def kept():  # numba alone: torch's own OpenMP hangs in a forked child unless it has 1 thread
        sel = window_select.WindowSelector(64, 6, 8, 8, 5, -1.0)
        sel.add(sim, 0)
        sel.add(sim[::-1].copy(), 1)
        return sel.kept_index.tolist()

    ref = kept()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, json.dumps([threads(), kept() == ref]).encode())
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    out["child"] = json.loads(os.read(r, 1000).decode() or "null")
    out["child_status"] = status
print(json.dumps(out))
"""


def _threads_in_subprocess(torch_threads, mode="plain", **env):
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(torch_threads), mode], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _omp_layer_available() -> bool:
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (needs the system's libgomp)
    except ImportError:
        return False
    return True


@_TWO_THREADS
@pytest.mark.skipif(not _omp_layer_available(), reason="numba's OpenMP threading layer cannot load here")
def test_selection_threads_follow_torch_on_the_openmp_layer():
    """With numba's OpenMP layer the selection takes torch's 2 threads (numba's default layer order
    would take TBB first); with one torch thread, FSVOS_COMPILED_THREADS=1 or another layer it
    stays on one thread; a forked child runs it on one thread with the same result."""
    two = _threads_in_subprocess(2, "fork")
    assert two["threads"] == 2 and two["layer"] == "omp"
    assert two["child_status"] == 0 and two["child"] == [1, True]
    assert _threads_in_subprocess(1)["threads"] == 1
    assert _threads_in_subprocess(2, FSVOS_COMPILED_THREADS="1")["threads"] == 1
    assert _threads_in_subprocess(2, NUMBA_THREADING_LAYER="workqueue")["threads"] == 1


def test_environment_switch_disables_it(monkeypatch):
    monkeypatch.setenv("FSVOS_FUSED_SELECT", "0")
    assert not window_select.available()
    monkeypatch.setenv("FSVOS_FUSED_SELECT", "1")
    assert window_select.available()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_compiled_pixel_passes_equal_torch(k, monkeypatch):
    """Soft aggregation (bitwise), labels (first maximum on ties) and confidence of the compiled
    per-pixel passes against the torch ones, with ties, saturated and absent objects."""
    from fsvos.inference import pixel_kernels
    from fsvos.inference.preprocess import aggregate
    from fsvos.inference.propagator import _argmax0, confidence_of

    g = torch.Generator().manual_seed(k)
    prob = torch.rand(k, 1, 67, 45, generator=g)  # odd size: a partial last chunk
    prob[0, 0, :5] = 1.0  # saturated: the clamps matter
    prob[-1, 0, 5:9] = 0.0
    if k > 1:
        prob[1, 0, 9:12] = prob[0, 0, 9:12]  # ties between objects
        prob[1] *= 1e-6  # an object absent from the labels: confidence 1 by the union rule
    assert pixel_kernels.usable(prob)
    fused = aggregate(prob)
    monkeypatch.setenv("FSVOS_FUSED_SELECT", "0")
    assert not pixel_kernels.usable(prob)
    ref = aggregate(prob)
    assert torch.equal(fused, ref)
    frame = ref[:, 0]
    lab, best = _argmax0(frame)
    conf = confidence_of(frame, lab, best)
    labels, conf2 = pixel_kernels.labels_and_confidence(frame)
    assert labels.dtype == np.uint8 and np.array_equal(labels, lab.numpy())
    np.testing.assert_allclose(conf2, conf, rtol=0, atol=1e-6)
    assert conf2.shape == (k,) and conf2.dtype == np.float32
    # labels tie-break like torch.argmax: equal maxima go to the first class
    even = torch.full((k + 1, 3, 3), 1.0 / (k + 1))
    assert (pixel_kernels.labels_and_confidence(even)[0] == 0).all()


def test_warm_up_compiles_every_kernel():
    """setup.sh compiles the kernels ahead of the first propagation (numba caches them)."""
    from fsvos.inference import pixel_kernels

    assert pixel_kernels.warm_up()
    from fsvos.model import _winograd_tiles, decoder_kernels, pool_kernels

    parallel = threads() > 1  # the variant this process runs
    kernels = [pixel_kernels._aggregate, pixel_kernels._labels_and_stats]
    if parallel:
        kernels += [window_select._select_frame_parallel, window_select._finish_rows_parallel,
                    _winograd_tiles.input_kernel_parallel, _winograd_tiles.output_kernel_parallel,
                    decoder_kernels._upsample_add_parallel, decoder_kernels._conv_to_one_parallel,
                    decoder_kernels._conv_to_one_planar_parallel, decoder_kernels._upsample4_parallel,
                    pool_kernels._relu_pool_parallel]
    else:
        kernels += [window_select._select_frame, window_select._finish_rows, _winograd_tiles.input_kernel,
                    _winograd_tiles.output_kernel, decoder_kernels._upsample_add_rows,
                    decoder_kernels._conv_to_one_rows, decoder_kernels._conv_to_one_planar_rows,
                    decoder_kernels._upsample4_rows, pool_kernels._relu_pool_rows]
    for kernel in kernels:
        assert kernel.signatures, kernel
