"""The compiled local-window selection (numba) against the torch path it replaces."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import moving_keys
from fsvos.inference import window_select
from fsvos.numba_threads import threads
from fsvos.inference.matching import (Int8Keys, WindowGrid, _bf16_operands, exact_logits, int8_available, local_affinity,
                                      quantise_int8, readout)
from fsvos.inference.memory import MemoryBank
from fsvos.inference.propagator import Propagator

pytestmark = pytest.mark.skipif(not window_select.available(), reason="numba not installed")


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
    mk, q = moving_keys(t, 16, h, w, seed=h * w + t)
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
    mk, q = moving_keys(t, 64, h, w, seed=3 * h + w)
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
            out[m] = window_select._row_argmax(s[m], s[m, :0], block_key)[0]
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
    mk, q = moving_keys(t, 32, h, w, seed=11)
    bank = MemoryBank()
    for i in range(t):
        bank.add(i, mk[i], torch.randn(2, 8, h, w))
    assert torch.equal(bank.keys, mk) and bank.keys.transpose(1, 2).is_contiguous()
    grid = WindowGrid(h, w, 7, torch.device("cpu"))
    ref = local_affinity(mk, mk.pow(2).sum(1), q, grid, "similarity", 20, compiled=False)
    new = local_affinity(bank.keys, bank.key_sq, q, grid, "similarity", 20, compiled=True)
    torch.testing.assert_close(_dense(new, t * h * w), _dense(ref, t * h * w), rtol=0, atol=1e-6)


_INT8 = pytest.mark.skipif(not int8_available(), reason="no integer GEMM in this torch")


def _integer_keys(t, ck, h, w, seed):
    """Memory keys that are even integers with largest element 254 (bank scale 2) and queries that
    are integers with largest element 127 (query scale 1): int8 quantisation is exact, and so are
    the offsets |k|^2 / (2 a b) = |k|^2 / 4."""
    g = torch.Generator().manual_seed(seed)
    mk = 2.0 * torch.randint(-127, 128, (t, ck, h * w), generator=g).float()
    mk[0, 0, 0] = 254.0
    q = torch.randint(-127, 128, (ck, h * w), generator=g).float()
    q[0, 0] = 127.0
    return mk, q


@_INT8
@pytest.mark.parametrize("reference", ["similarity", "fixed"])
@pytest.mark.parametrize("outside_logit", [-1.0, float("-inf"), 50.0])
@pytest.mark.parametrize("shape", [(9, 12, 5, 3, 20), (6, 5, 7, 2, 11), (16, 20, 15, 8, 20), (3, 5, 3, 2, 4)])
def test_int8_selection_equals_the_exact_one_when_quantisation_is_exact(reference, outside_logit, shape):
    """Selection on int8 keys (integer GEMMs, keys = dot - column offset, the outside slots'
    logit in integer units) keeps the float32 path's candidates and weights when the keys and
    queries quantise exactly: the integer keys are then the exact logits times a constant."""
    h, w, window, t, top_k = shape
    mk, q = _integer_keys(t, 64, h, w, seed=h * w + t)
    bank = MemoryBank(int8_keys=True)
    for i in range(t):
        bank.add(i, mk[i], torch.zeros(1, 1, h, w))
    keys = bank.int8_keys
    assert keys.scale == 2.0 and torch.equal(keys.q8.float() * 2.0, mk.transpose(1, 2))
    grid = WindowGrid(h, w, window, torch.device("cpu"))
    ref = local_affinity(bank.keys, bank.key_sq, q, grid, reference, top_k, outside_logit=outside_logit,
                         compiled=True)
    new = local_affinity(bank.keys, bank.key_sq, q, grid, reference, top_k, outside_logit=outside_logit,
                         select_bf16=True, compiled=True, int8_keys=keys)
    torch.testing.assert_close(_dense(new, t * h * w), _dense(ref, t * h * w), rtol=0, atol=1e-6)


@_INT8
@pytest.mark.parametrize("shape", [(32, 32, 15, 8, 20), (16, 20, 15, 8, 20), (9, 12, 5, 3, 20)])
def test_int8_selection_keeps_the_exact_candidates_as_often_as_bf16(shape):
    """On network-like keys, int8 quantisation changes the chosen candidates only at near-ties, as
    the bf16 similarity does: the kept sets overlap the float32 top-k as much (within 2%), and
    the kept candidates are weighted by their exact float32 logits."""
    h, w, window, t, top_k = shape
    mk, q = moving_keys(t, 64, h, w, seed=7 * h + w)
    bank = MemoryBank(int8_keys=True)
    for i in range(t):
        bank.add(i, mk[i], torch.zeros(1, 1, h, w))
    grid = WindowGrid(h, w, window, torch.device("cpu"))
    args = (bank.keys, bank.key_sq, q, grid, "similarity", top_k)
    exact = local_affinity(*args, compiled=True)
    bf16 = local_affinity(*args, select_bf16=True, compiled=True)
    int8 = local_affinity(*args, select_bf16=True, compiled=True, int8_keys=bank.int8_keys)

    def overlap(a):
        return np.mean([len(set(x) & set(y)) for x, y in zip(a.index.tolist(), exact.index.tolist())]) / top_k

    assert overlap(int8) >= min(0.95, overlap(bf16) - 0.02)
    logits = exact_logits(bank.keys, bank.key_sq, q.t().contiguous(), int8.index, int8.weight > 0, -1.0)
    torch.testing.assert_close(int8.weight, torch.softmax(logits, 1) * (int8.weight > 0), rtol=0, atol=1e-5)


def test_memory_bank_int8_keys_follow_its_largest_key():
    """The bank's int8 keys use one scale, its largest key element over 127; a frame with a larger
    element re-quantises the others; eviction and the temporary entry keep keys and int8 keys
    together."""
    h, w = 4, 5
    g = torch.Generator().manual_seed(3)
    bank = MemoryBank(max_frames=3, int8_keys=True)
    largest = 0.0
    for i, size in enumerate([1.0, 4.0, 2.0, 9.0, 3.0]):
        key = size * torch.randn(16, h * w, generator=g)
        largest = max(largest, float(key.abs().max()))
        bank.add(i, key, torch.zeros(1, 2, h, w), permanent=i == 0, temporary=i == 4)
        keys = bank.int8_keys
        assert keys.scale == pytest.approx(largest / 127.0, rel=1e-6)
        assert torch.equal(keys.q8, quantise_int8(bank.keys.transpose(1, 2), keys.scale))
        assert int(keys.q8.abs().max()) <= 127
    assert bank.frames == [0, 3, 4]
    assert MemoryBank().int8_keys is None
    empty = MemoryBank(int8_keys=True)
    empty.add(0, torch.zeros(16, h * w), torch.zeros(1, 2, h, w))
    assert empty.int8_keys.scale == 1.0 and not empty.int8_keys.q8.any()


@_INT8
def test_int8_selection_needs_its_offsets_and_rescoring():
    sel = window_select.WindowSelector(4, 2, 2, 2, 3, -1.0, int_unit=0.5)
    s = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="column_offset"):
        sel.add(s, 0)
    sel.add(s, 0, np.zeros(4, np.int32))
    one = torch.zeros(1, 8, 4)
    with pytest.raises(ValueError, match="re-scored"):
        sel.result(one, one[:, 0], torch.zeros(4, 8), rescore=False)
    with pytest.raises(ValueError, match="int_unit"):
        window_select.WindowSelector(4, 2, 2, 2, 3, -1.0).add(s, 0, np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="do not match"):
        local_affinity(one, one[:, 0], torch.zeros(8, 4), WindowGrid(2, 2, 3, torch.device("cpu")), "similarity", 2,
                       select_bf16=True, compiled=True, int8_keys=Int8Keys(torch.zeros(2, 4, 8, dtype=torch.int8), 1.0))


@_INT8
@pytest.mark.filterwarnings("ignore:the bundled default weights are PRELIMINARY")
def test_bf16_propagation_selects_on_int8_keys(disc_cine, monkeypatch):
    """The bf16 mode selects on int8 keys (FSVOS_INT8_SELECT=0: on the bf16 similarity).  With the
    bundled (trained) default, its labels agree with the fp32 mode's as closely as the bf16
    similarity's do, and they are as accurate."""
    from fsvos.model.weights import load_model

    frames, truth = disc_cine
    model = load_model()
    runs = {}
    for name, precision, flag in (("fp32", "fp32", "1"), ("bf16", "bf16", "0"), ("int8", "bf16", "1")):
        monkeypatch.setenv("FSVOS_INT8_SELECT", flag)
        p = Propagator(model, window=5, top_k=8, precision=precision)
        assert p._select_int8 == (name == "int8")
        runs[name] = p.propagate(frames, {3: truth[3]}).labels
    assert (runs["int8"] == runs["fp32"]).mean() >= (runs["bf16"] == runs["fp32"]).mean() - 1e-3
    assert abs((runs["int8"] == truth).mean() - (runs["fp32"] == truth).mean()) < 1e-3
    assert (runs["fp32"] == truth).mean() > 0.95


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
    mk, q = moving_keys(t, 64, h, w, seed=h + w + t)
    sq = mk.pow(2).sum(1)
    grid = WindowGrid(h, w, window, torch.device("cpu"))
    one, two = (local_affinity(mk, sq, q, grid, reference, top_k, select_bf16=select_bf16, compiled=True,
                               select_threads=n) for n in (1, 2))
    assert torch.equal(two.index, one.index) and torch.equal(two.weight, one.weight)
    if not select_bf16:  # and the torch path's (bf16 ties may pick other positions: tested above)
        ref = local_affinity(mk, sq, q, grid, reference, top_k, compiled=False)
        torch.testing.assert_close(_dense(two, t * h * w), _dense(ref, t * h * w), rtol=0, atol=1e-6)


@_TWO_THREADS
@_INT8
@pytest.mark.parametrize("reference", ["similarity", "fixed"])
def test_parallel_int8_selection_equals_one_thread(reference):
    """On int8 keys too, two threads give bitwise the one-thread candidates and weights."""
    h, w, t = 32, 32, 8
    mk, q = moving_keys(t, 64, h, w, seed=5)
    bank = MemoryBank(int8_keys=True)
    for i in range(t):
        bank.add(i, mk[i], torch.zeros(1, 1, h, w))
    grid = WindowGrid(h, w, 15, torch.device("cpu"))
    one, two = (local_affinity(bank.keys, bank.key_sq, q, grid, reference, 20, select_bf16=True, compiled=True,
                               select_threads=n, int8_keys=bank.int8_keys) for n in (1, 2))
    assert torch.equal(two.index, one.index) and torch.equal(two.weight, one.weight)


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
    from fsvos.model import decoder_kernels, pool_kernels, winograd_kernels

    parallel = threads() > 1  # the variant this process runs
    kernels = [pixel_kernels._aggregate, pixel_kernels._labels_and_stats]
    if parallel:
        kernels += [window_select._select_frame_parallel, window_select._finish_rows_parallel,
                    winograd_kernels._input_kernel_parallel, winograd_kernels._output_kernel_parallel,
                    decoder_kernels._upsample_add_parallel, decoder_kernels._conv_to_one_parallel,
                    decoder_kernels._conv_to_one_planar_parallel, decoder_kernels._upsample4_parallel,
                    pool_kernels._relu_pool_parallel]
    else:
        kernels += [window_select._select_frame, window_select._finish_rows, winograd_kernels._input_kernel,
                    winograd_kernels._output_kernel, decoder_kernels._upsample_add_rows,
                    decoder_kernels._conv_to_one_rows, decoder_kernels._conv_to_one_planar_rows,
                    decoder_kernels._upsample4_rows, pool_kernels._relu_pool_rows]
    from fsvos.inference import int8_select

    if int8_select.available():
        kernels.append(int8_select._select_parallel if parallel else int8_select._select)
    for kernel in kernels:
        assert kernel.signatures, kernel
