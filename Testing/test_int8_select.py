"""The fused int8 selection (products computed inside the selection loop, AVX-512 VNNI) against the
int8 path it replaces: torch's integer GEMM per memory frame, then the compiled selection."""

import numpy as np
import pytest
import torch

from conftest import moving_keys
from fsvos.inference import int8_select, window_select
from fsvos.inference.matching import WindowGrid, _int8_operands, local_affinity, quantise_int8
from fsvos.inference.memory import MemoryBank
from fsvos.numba_threads import threads

pytestmark = pytest.mark.skipif(not int8_select.available(), reason="needs numba and a CPU with AVX-512 VNNI")


def _tied_keys(t, ck, h, w, seed):
    """Keys and queries of a few small integer values: many exactly equal similarities, so the
    first-maximum rule of the window centre and the order among equal candidates decide."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-1, 2, (t, ck, h * w), generator=g).float(),
            torch.randint(0, 2, (ck, h * w), generator=g).float())


def _bank(mk, h, w):
    bank = MemoryBank(int8_keys=True)
    for i in range(mk.shape[0]):
        bank.add(i, mk[i], torch.zeros(1, 1, h, w))
    return bank


def _selectors(bank, q, h, w, window, reference, top_k, outside_logit, threads=None):
    """(selector filled by the GEMM path, selector filled by the fused path) on the bank's keys."""
    keys = bank.int8_keys
    qt = q.t().contiguous()
    q8, offset, unit = _int8_operands(qt, bank.key_sq, keys)
    m = qt.shape[0]
    made = [window_select.WindowSelector(m, top_k, h, w, window, outside_logit, reference == "similarity",
                                         threads=threads, int_unit=unit) for _ in range(2)]
    s = torch.empty(m, h * w, dtype=torch.int32)
    for ti in range(keys.q8.shape[0]):
        torch._int_mm(q8, keys.q8[ti].t(), out=s)
        made[0].add(s.numpy(), ti, offset[ti].numpy())
    int8_select.select_frames(made[1], int8_select.pack_queries(q8), keys.packed,
                              int8_select.column_offsets(offset, keys.key_sum))
    return made


@pytest.mark.parametrize("reference", ["similarity", "fixed"])
@pytest.mark.parametrize("outside_logit", [-1.0, float("-inf"), 50.0])
@pytest.mark.parametrize("shape", [(32, 32, 15, 8, 64, 20), (9, 12, 5, 3, 64, 20), (7, 13, 15, 4, 40, 31),
                                   (3, 5, 3, 2, 8, 4), (16, 20, 15, 1, 64, 1)])
def test_fused_selection_equals_the_gemm_path(reference, outside_logit, shape):
    """The same kept lists (keys, memory positions, counts) and window centres, bitwise, as torch's
    integer GEMMs read by the compiled selection: maps not a multiple of 64 positions, query
    counts not a multiple of 4, fewer than 64 key channels, lists that a window cannot fill
    (window 5 keeps 20 of 25 slots, window 3 of 9 across 2 frames)."""
    h, w, window, t, ck, top_k = shape
    mk, q = moving_keys(t, ck, h, w, seed=h * w + t)
    gemm, fused = _selectors(_bank(mk, h, w), q, h, w, window, reference, top_k, outside_logit)
    assert np.array_equal(fused.count, gemm.count)
    assert np.array_equal(fused.kept_key, gemm.kept_key)
    assert np.array_equal(fused.kept_index, gemm.kept_index)
    assert np.array_equal(fused.centre, gemm.centre)


@pytest.mark.parametrize("reference", ["similarity", "fixed"])
def test_fused_selection_breaks_ties_as_the_gemm_path(reference):
    """With many equal similarities, the window centre is the first maximum and equal candidates
    keep the order in which the window is read, as in the GEMM path."""
    h, w, t = 12, 20, 4
    mk, q = _tied_keys(t, 64, h, w, seed=11)
    gemm, fused = _selectors(_bank(mk, h, w), q, h, w, 7, reference, 20, -1.0)
    assert (gemm.kept_key[:, :-1] == gemm.kept_key[:, 1:]).mean() > 0.5  # ties do occur
    assert np.array_equal(fused.kept_key, gemm.kept_key)
    assert np.array_equal(fused.kept_index, gemm.kept_index)
    assert np.array_equal(fused.centre, gemm.centre)


@pytest.mark.skipif(threads() < 2, reason="needs two threads on numba's OpenMP layer")
def test_fused_selection_on_two_threads_equals_one():
    h, w, t = 32, 32, 8
    mk, q = moving_keys(t, 64, h, w, seed=5)
    bank = _bank(mk, h, w)
    one = _selectors(bank, q, h, w, 15, "similarity", 20, -1.0, threads=1)[1]
    two = _selectors(bank, q, h, w, 15, "similarity", 20, -1.0, threads=2)[1]
    assert np.array_equal(one.kept_index, two.kept_index) and np.array_equal(one.kept_key, two.kept_key)


def test_local_affinity_runs_the_fused_selection_where_it_can(monkeypatch):
    """local_affinity on the bank's int8 keys gives bitwise the affinity of the GEMM path
    (FSVOS_VNNI_SELECT=0), with or without the bank's packed keys; a window wider than 16 or 32
    candidates and more take the GEMM path."""
    h, w, t = 20, 24, 6
    mk, q = moving_keys(t, 64, h, w, seed=9)
    bank = _bank(mk, h, w)
    keys = bank.int8_keys
    assert keys.packed is not None and keys.key_sum is not None
    unpacked = type(keys)(q8=keys.q8, scale=keys.scale)
    for window, top_k in ((15, 20), (17, 20), (5, 40)):
        grid = WindowGrid(h, w, window, torch.device("cpu"))

        def affinity(int8_keys):
            return local_affinity(bank.keys, bank.key_sq, q, grid, "similarity", top_k, select_bf16=True,
                                  compiled=True, int8_keys=int8_keys)

        assert int8_select.usable(window, top_k, 64) == (window <= 16 and top_k < 32)
        monkeypatch.setenv("FSVOS_VNNI_SELECT", "0")
        assert not int8_select.available()
        ref = affinity(keys)
        monkeypatch.setenv("FSVOS_VNNI_SELECT", "1")
        for new in (affinity(keys), affinity(unpacked)):
            assert torch.equal(new.index, ref.index) and torch.equal(new.weight, ref.weight)


def test_memory_bank_keeps_packed_keys_in_step():
    """The packed keys and key sums follow the int8 keys through re-quantisation (a frame with a
    larger key), eviction and the temporary entry."""
    h, w = 5, 7
    g = torch.Generator().manual_seed(4)
    bank = MemoryBank(max_frames=3, int8_keys=True)
    for i, size in enumerate([1.0, 4.0, 2.0, 9.0, 3.0]):
        bank.add(i, size * torch.randn(48, h * w, generator=g), torch.zeros(1, 2, h, w), permanent=i == 0,
                 temporary=i == 4)
        keys = bank.int8_keys
        assert torch.equal(keys.q8, quantise_int8(bank.keys.transpose(1, 2), keys.scale))
        assert torch.equal(keys.packed, int8_select.pack_keys(keys.q8))
        assert torch.equal(keys.key_sum, keys.q8.sum(2, dtype=torch.int32))
    assert bank.frames == [0, 3, 4]
    assert MemoryBank(int8_keys=False).int8_keys is None


def test_packed_layout():
    """Position p, channel c of frame t sits at byte ((p // 16) * 16 + c // 4) * 64 + (p % 16) * 4 + c % 4
    of the frame's row, channels zero-padded to 64 and positions to a multiple of 64."""
    g = torch.Generator().manual_seed(0)
    q8 = torch.randint(-127, 128, (2, 70, 40), generator=g).to(torch.int8)
    packed = int8_select.pack_keys(q8)
    assert packed.shape == (2, 128 * 64)
    t, p, c = torch.meshgrid(torch.arange(2), torch.arange(128), torch.arange(64), indexing="ij")
    at = ((p // 16) * 16 + c // 4) * 64 + (p % 16) * 4 + c % 4
    expect = torch.zeros(2, 128, 64, dtype=torch.int8)
    expect[:, :70, :40] = q8
    assert torch.equal(packed[t, at], expect)
    col = int8_select.column_offsets(torch.full((2, 70), 5, dtype=torch.int32), q8.sum(2, dtype=torch.int32))
    assert col.shape == (2, 128) and (col[:, 70:] == int8_select.PAD_OFFSET).all()
    assert np.array_equal(col[:, :70], 5 + 128 * q8.sum(2, dtype=torch.int32).numpy())


def test_fused_selection_refuses_what_it_cannot_do():
    h, w = 4, 4
    mk, q = moving_keys(2, 8, h, w, seed=1)
    bank = _bank(mk, h, w)
    keys = bank.int8_keys
    q8, offset, unit = _int8_operands(q.t().contiguous(), bank.key_sq, keys)
    queries = int8_select.pack_queries(q8)
    col = int8_select.column_offsets(offset, keys.key_sum)

    def run(selector, queries=queries, packed=keys.packed, col=col):
        int8_select.select_frames(selector, queries, packed, col)

    with pytest.raises(ValueError, match="up to 16 wide"):
        run(window_select.WindowSelector(16, 4, h, w, 17, -1.0, int_unit=unit))
    with pytest.raises(ValueError, match="fewer than 32"):
        run(window_select.WindowSelector(16, 32, h, w, 3, -1.0, int_unit=unit))
    with pytest.raises(ValueError, match="int_unit"):
        run(window_select.WindowSelector(16, 4, h, w, 3, -1.0))
    with pytest.raises(ValueError, match="do not match a 10x10 map"):
        run(window_select.WindowSelector(16, 4, 10, 10, 3, -1.0, int_unit=unit))
    with pytest.raises(ValueError, match="do not match 12 query positions"):
        run(window_select.WindowSelector(12, 4, h, w, 3, -1.0, int_unit=unit))
    with pytest.raises(ValueError, match="at most 64 key channels"):
        int8_select.pack_keys(torch.zeros(1, 4, 65, dtype=torch.int8))
    used = window_select.WindowSelector(16, 4, h, w, 3, -1.0, int_unit=unit)
    run(used)
    with pytest.raises(ValueError, match="fresh selector"):
        run(used)


def test_propagator_says_where_the_fused_selection_runs(compact_model):
    """bf16 with the default window and top-k selects on int8 keys with the products in the loop;
    a 17-wide window takes the GEMM path; fp32 selects on float32 similarities."""
    from fsvos.inference.propagator import Propagator

    assert Propagator(compact_model, precision="bf16").fused_int8
    wide = Propagator(compact_model, precision="bf16", window=17)
    assert wide.selection == "int8" and not wide.fused_int8
    exact = Propagator(compact_model, precision="fp32")
    assert exact.selection == "fp32" and not exact.fused_int8
