"""Candidate selection on int8 keys with the integer dot products computed in the loop (AVX-512 VNNI).

The int8 path of :func:`fsvos.inference.matching.local_affinity` computes, per memory frame, the
(M x N) int32 products of int8 queries and keys with torch's integer GEMM, and the compiled
selection (:mod:`.window_select`) then reads them back: at the compact model's 32 x 32 map that is
4 MB written and read per memory frame, more than the 1 MB L2 cache.  Profiled on this project's
2-core machine (bf16, 8 memory frames, one query frame): 8 GEMMs 1.6-2.1 ms, then 2.7-3.0 ms of
selection, mostly spent waiting on those 4 MB (the argmax over them alone 0.9 ms).

Here one loop does both.  For 4 query rows at a time it computes their products with one memory
frame's keys, 64 positions per step, into a buffer of 4 rows (16 KB at 1024 positions: it stays in
the L1 cache), keeping a running argmax of each row by lanes, then selects each row's candidates
from that buffer: the window centre (Eq. 8: the first maximum, from the lanes' maxima), the skip
test, and the window read row by row, 16 keys compared at once with the list's last entry.  The
products are ``vpdpbusd`` instructions (unsigned x signed bytes, summed in int32) written as LLVM
IR (:func:`_dot_rows`): 4 rows x 4 blocks of 16 positions in 16 registers, each key load used by 4
rows, about one instruction per cycle (this core's VNNI throughput).  The kept list of each row
(the top k < 32: 32 int32 keys sorted in descending order and their int64 positions) is merged in
vector registers, one branch-free insertion per candidate (:func:`_merge_lanes`).  The selection
is the int8 path's exactly: the same integer keys (``q8 . k8 - offset``), the same argmax, the
same window order and insertion rule (after the equal keys; a key that does not beat entry k
falls off), hence the same kept lists bitwise (tested against
:class:`~fsvos.inference.window_select.WindowSelector`).  Measured (bundled default's keys from
the bench cine, 8 memory frames, 2 threads): 2.2-2.5 ms against 4.2-4.8 ms for the GEMMs and the
selection.

``vpdpbusd`` multiplies unsigned bytes by signed ones; the queries are stored as ``q8 + 128``
(unsigned) and the extra ``128 * sum(k8)`` of each key joins its column offset.  Keys are packed
per memory frame as [N / 16 position blocks][16 channel groups][16 positions][4 channels] (one
64-byte vector per block and group) with the channels zero-padded to 64 and the positions to a
multiple of 64 (padded columns get an offset that keeps them below every real key).

Needs numba and a CPU with AVX-512 VNNI (:func:`available`); ``FSVOS_VNNI_SELECT=0`` in the
environment turns it off (the GEMM + selection path runs).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np
import torch

from ..numba_threads import numba, threads_for_loop
from . import window_select

#: query rows per step of the product kernel
ROWS = 4
#: positions per step of the product kernel (4 blocks of 16)
STEP = 64
#: capacity of the kept lists (the top k < LIST are kept)
LIST = 32
#: key channels the kernel handles (keys with fewer are zero-padded)
CHANNELS = 64
#: offset of padded key columns: their keys (-PAD_OFFSET) stay below every real key, which is at
#: least -(2**30 + 64 * 255 * 127) (offsets are below 2**30, see matching._int8_operands)
PAD_OFFSET = 2 ** 31 - 1


@functools.lru_cache(maxsize=None)
def _host_has_vnni() -> bool:
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx512vnni", False))
    except Exception:  # pragma: no cover - llvmlite without the query
        return False


def available() -> bool:
    """True if the fused int8 selection can run here: numba, a CPU with AVX-512 VNNI, the compiled
    selection enabled (:func:`.window_select.available`) and ``FSVOS_VNNI_SELECT`` not 0."""
    return (numba is not None and window_select.available() and os.environ.get("FSVOS_VNNI_SELECT", "1") != "0"
            and _host_has_vnni())


def usable(window: int, top_k: int, key_channels: int) -> bool:
    """Whether the fused selection handles these settings (and :func:`available` holds): windows at
    most 16 wide, fewer than :data:`LIST` candidates kept, at most 64 key channels."""
    return window <= 16 and top_k < LIST and key_channels <= CHANNELS and available()


def padded_positions(n: int) -> int:
    """N rounded up to a multiple of :data:`STEP`: the positions of a packed frame."""
    return -(-n // STEP) * STEP


def pack_keys(q8: torch.Tensor) -> torch.Tensor:
    """(T, N, C_k) int8 position-major memory keys, C_k <= 64 -> (T, N_pad * 64) int8 in the
    kernel's layout (module notes), N_pad = :func:`padded_positions` (N), zeros as padding."""
    t, n, ck = q8.shape
    if ck > CHANNELS:
        raise ValueError(f"the fused int8 selection handles at most {CHANNELS} key channels, not {ck}")
    n_pad = padded_positions(n)
    keys = torch.zeros(t, n_pad, CHANNELS, dtype=torch.int8)
    keys[:, :n, :ck] = q8
    packed = keys.view(t, n_pad // 16, 16, CHANNELS // 4, 4).transpose(2, 3).contiguous()  # (T, blocks, groups, 16, 4)
    return packed.view(t, n_pad * CHANNELS)


def column_offsets(offset: torch.Tensor, key_sum: torch.Tensor) -> np.ndarray:
    """The kernel's (T, N_pad) int32 column offsets: the int8 path's offsets (T, N) int32 (keys =
    q8 . k8 - offset) plus 128 * key_sum ((T, N) int32, the sums of each int8 key's elements: the
    queries are stored as q8 + 128), padded columns :data:`PAD_OFFSET`."""
    t, n = offset.shape
    col = torch.full((t, padded_positions(n)), PAD_OFFSET, dtype=torch.int32)
    torch.add(offset, key_sum, alpha=128, out=col[:, :n])
    return col.numpy()


def pack_queries(q8: torch.Tensor) -> np.ndarray:
    """(M, C_k) int8 queries -> (M rounded up to a multiple of 4, 64) uint8 holding q8 + 128 (zero
    rows and channels as padding: padded channels meet zero keys, padded rows are not read)."""
    m, ck = q8.shape
    if ck > CHANNELS:
        raise ValueError(f"the fused int8 selection handles at most {CHANNELS} key channels, not {ck}")
    out = torch.zeros(-(-m // ROWS) * ROWS, CHANNELS, dtype=torch.uint8)
    out[:m, :ck] = (q8.to(torch.int16) + 128).to(torch.uint8)
    return out.numpy()


if numba is not None:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    from .window_select import _NO_KEY, _window_bounds, _window_row

    _JIT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    _CHUNKS_PER_THREAD = 4

    from ..model import simd_ir as ir_
    from ..model.simd_ir import I32 as _I32, I64 as _I64, VI32 as _VI32

    def _address(b, base, offset: int):
        return b.inttoptr(b.add(base, ir.Constant(_I64, offset)), _VI32.as_pointer())

    def _splat(b, value, vtype=_VI32):
        return ir_.splat_value(b, value, vtype)

    def _mask_bits(b, lanes):
        """<16 x i1> -> i64 with bit j set for lane j."""
        return b.zext(b.bitcast(lanes, ir.IntType(16)), _I64)

    _IOTA = ir_.int_lanes(range(16))

    @intrinsic
    def _dot_rows(typingctx, q_addr, k_addr, col_addr, out_addr, out_stride, best_addr, position):
        """out[r][p] = (q_r . k_p) - col[p] for 4 query rows r and the 64 positions p from
        ``position``, and a running argmax of each row by lanes.

        q_addr: 4 rows of 64 uint8 (q8 + 128), 64 bytes apart; k_addr: 4 blocks of packed keys
        (1 KB each, see the module notes); col_addr: 64 int32 column offsets; out_addr: int32 row r
        at out_addr + r * out_stride (bytes).  best_addr: per row r, 16 int32 maxima at best_addr +
        128 r and the 16 int32 positions where each lane first reached its maximum at + 64 (lane j
        covers the positions = j mod 16; updated on a strictly larger key, so the first maximum
        stays).  Addresses are integers; unaligned is fine."""
        sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64,
                         types.int32)

        def codegen(context, b, signature, args):
            qa, ka, ca, oa, stride, ba, pos0 = args
            fnty = ir.FunctionType(_VI32, [_VI32, _VI32, _VI32])
            vpdpbusd = cgutils.get_or_insert_function(b.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
            zero = ir_.int_lanes([0] * 16)
            acc = {}
            for blk in range(4):
                neg = b.sub(zero, b.load(_address(b, ca, blk * 64), align=4))
                for r in range(ROWS):
                    acc[r, blk] = neg
            for g in range(CHANNELS // 4):
                q = [_splat(b, b.load(b.inttoptr(b.add(qa, ir.Constant(_I64, r * CHANNELS + g * 4)),
                                                 _I32.as_pointer()), align=1)) for r in range(ROWS)]
                for blk in range(4):
                    k = b.load(_address(b, ka, blk * 1024 + g * 64), align=1)
                    for r in range(ROWS):
                        acc[r, blk] = b.call(vpdpbusd, [acc[r, blk], q[r], k])
            lanes = b.add(_splat(b, pos0), _IOTA)
            for r in range(ROWS):
                row = b.add(oa, b.mul(stride, ir.Constant(_I64, r)))
                best_p = _address(b, ba, 128 * r)
                where_p = _address(b, ba, 128 * r + 64)
                best, where = b.load(best_p, align=4), b.load(where_p, align=4)
                for blk in range(4):
                    b.store(acc[r, blk], _address(b, row, blk * 64), align=4)
                    above = b.icmp_signed(">", acc[r, blk], best)
                    best = b.select(above, acc[r, blk], best)
                    where = b.select(above, b.add(lanes, _splat(b, ir.Constant(_I32, 16 * blk))), where)
                b.store(best, best_p, align=4)
                b.store(where, where_p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _lanes_argmax(typingctx, best_addr):
        """The first position of the maximum of a row from its running argmax by lanes (16 int32
        maxima at best_addr, 16 int32 first positions at best_addr + 64): the smallest position
        among the lanes holding the largest maximum."""
        sig = types.int64(types.int64)

        def codegen(context, b, signature, args):
            best = b.load(_address(b, args[0], 0), align=4)
            where = b.load(_address(b, args[0], 64), align=4)
            smax = cgutils.get_or_insert_function(b.module, ir.FunctionType(_I32, [_VI32]), "llvm.vector.reduce.smax.v16i32")
            smin = cgutils.get_or_insert_function(b.module, ir.FunctionType(_I32, [_VI32]), "llvm.vector.reduce.smin.v16i32")
            top = b.call(smax, [best])
            big = ir_.int_lanes([2 ** 31 - 1] * 16)
            first = b.call(smin, [b.select(b.icmp_signed("==", best, _splat(b, top)), where, big)])
            return b.sext(first, _I64)

        return sig, codegen

    @intrinsic
    def _greater_lanes(typingctx, addr, value):
        """Bit j set (an int64) for each of the 16 int32 at addr with a value above ``value``."""
        sig = types.int64(types.int64, types.int32)

        def codegen(context, b, signature, args):
            v = b.load(b.inttoptr(args[0], _VI32.as_pointer()), align=4)
            return _mask_bits(b, b.icmp_signed(">", v, _splat(b, args[1])))

        return sig, codegen

    _VK = ir.VectorType(_I32, LIST)
    _VI = ir.VectorType(_I64, LIST)
    #: lane j <- lane j - 1 (lane 0 <- lane 0, replaced anyway)
    _UP = ir_.int_lanes([0] + list(range(LIST - 1)))
    #: lane j <- lane j - 1 of the first operand, lane 0 <- lane 0 of the second
    _UP_FROM = ir_.int_lanes([LIST] + list(range(LIST - 1)))

    def _insert_ir(b, keys, idx, key, index):
        """(keys, idx) with (key, index) inserted after the keys equal to it; the last falls off."""
        splat_key = _splat(b, key, _VK)
        below = b.icmp_signed("<", keys, splat_key)  # a suffix of the lanes: they move one lane up
        moved = b.shuffle_vector(below, ir.Constant(ir.VectorType(ir.IntType(1), LIST), None), _UP_FROM)
        keys = b.select(moved, b.shuffle_vector(keys, ir.Constant(_VK, ir.Undefined), _UP),
                        b.select(below, splat_key, keys))
        idx = b.select(moved, b.shuffle_vector(idx, ir.Constant(_VI, ir.Undefined), _UP),
                       b.select(below, _splat(b, index, _VI), idx))
        return keys, idx

    @intrinsic
    def _merge_lanes(typingctx, row_addr, bits, key_addr, index_addr, index_base):
        """Insert the int32 key at row_addr + 4 j, with index index_base + j, for every set bit j
        of ``bits`` in ascending order, into a kept list of LIST int32 keys sorted in descending
        order (at key_addr) and their int64 indices (at index_addr), each after the keys equal to
        it, the last entry falling off.  Branch-free per key (the list stays in registers): a key
        that does not beat entry k-1 lands at k or later, out of a list of the top k < LIST."""
        sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

        def codegen(context, b, signature, args):
            ra, bits0, ka, ia, base = args
            cttz = cgutils.get_or_insert_function(b.module, ir.FunctionType(_I64, [_I64, ir.IntType(1)]),
                                                  "llvm.cttz.i64")
            kp, ip = b.inttoptr(ka, _VK.as_pointer()), b.inttoptr(ia, _VI.as_pointer())
            keys0, idx0 = b.load(kp, align=4), b.load(ip, align=8)
            entry = b.block
            loop = b.append_basic_block("merge_loop")
            body = b.append_basic_block("merge_body")
            done = b.append_basic_block("merge_done")
            b.branch(loop)
            b.position_at_end(loop)
            bits = b.phi(_I64)
            keys = b.phi(_VK)
            idx = b.phi(_VI)
            bits.add_incoming(bits0, entry)
            keys.add_incoming(keys0, entry)
            idx.add_incoming(idx0, entry)
            b.cbranch(b.icmp_unsigned("!=", bits, ir.Constant(_I64, 0)), body, done)
            b.position_at_end(body)
            j = b.call(cttz, [bits, ir.Constant(ir.IntType(1), 1)])
            key = b.load(b.inttoptr(b.add(ra, b.shl(j, ir.Constant(_I64, 2))), _I32.as_pointer()), align=4)
            new_keys, new_idx = _insert_ir(b, keys, idx, key, b.add(base, j))
            rest = b.and_(bits, b.sub(bits, ir.Constant(_I64, 1)))
            bits.add_incoming(rest, body)
            keys.add_incoming(new_keys, body)
            idx.add_incoming(new_idx, body)
            b.branch(loop)
            b.position_at_end(done)
            b.store(keys, kp, align=4)
            b.store(idx, ip, align=8)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _insert(typingctx, key_addr, index_addr, key, index):
        """Insert (key, index) into the kept list at key_addr, index_addr (as _merge_lanes)."""
        sig = types.void(types.int64, types.int64, types.int32, types.int64)

        def codegen(context, b, signature, args):
            ka, ia, key, index = args
            kp, ip = b.inttoptr(ka, _VK.as_pointer()), b.inttoptr(ia, _VI.as_pointer())
            keys, idx = _insert_ir(b, b.load(kp, align=4), b.load(ip, align=8), key, index)
            b.store(keys, kp, align=4)
            b.store(idx, ip, align=8)
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(inline="always", **_JIT)
    def _merge_row(row, row_addr, best_addr, m, frame, n, h, w, radius, similarity_centre, centre, outside_key, k,
                   list_key, list_index):
        """Merge the window candidates of one memory frame into query row m's kept list, as
        window_select._select_rows does for one row, reading the keys from ``row`` (int32, N
        rounded up to 64 plus 16 of padding; row_addr its address; best_addr: its argmax by lanes,
        see _dot_rows).  list_key (M, 32) int32,
        list_index (M, 32) int64: the kept lists (sorted, _NO_KEY where empty), the top k < 32."""
        side = 2 * radius + 1
        least = list_key[m, k - 1]  # _NO_KEY until the list holds k
        if similarity_centre:
            c = _lanes_argmax(best_addr)
            top = row[c]
            centre[m] = c
            if top <= least and outside_key <= least:  # the frame's best cannot enter
                return
        else:
            c = centre[m]
        key_addr = list_key.ctypes.data + m * list_key.strides[0]
        index_addr = list_index.ctypes.data + m * list_index.strides[0]
        cy, x0, x1, y0, y1 = _window_bounds(c, h, w, radius)
        width_bits = (np.int64(1) << (x1 - x0 + 1)) - 1  # window width <= 16 (checked by select_frames)
        for step in range(side):  # window rows cy, cy+1, cy-1, cy+2, ...
            y = _window_row(cy, step)
            if y < y0 or y > y1:
                continue
            start = y * w + x0
            bits = _greater_lanes(row_addr + 4 * start, least) & width_bits
            if bits:  # left to right; a key the row's earlier ones pushed below entry k-1 falls off
                _merge_lanes(row_addr + 4 * start, bits, key_addr, index_addr, frame * n + start)
                least = list_key[m, k - 1]
        outside = side * side - (y1 - y0 + 1) * (x1 - x0 + 1)
        for i in range(outside):
            if outside_key <= list_key[m, k - 1]:
                break
            _insert(key_addr, index_addr, outside_key, -1 - (frame * n + c))

    @numba.njit(inline="always", **_JIT)
    def _select_row_range(queries, keys, col, m0, m1, m, n, h, w, radius, similarity_centre, centre, outside_key,
                          k, list_key, list_index):
        """Every memory frame's candidates for query rows m0..m1-1 (m0 a multiple of 4)."""
        frames, n_pad = col.shape
        buf = np.empty((ROWS, n_pad + 16), np.int32)  # 16 of padding: a window row reads 16 keys
        buf[:, n_pad:] = _NO_KEY
        stride = buf.strides[0]
        q_base = queries.ctypes.data
        k_base = keys.ctypes.data
        c_base = col.ctypes.data
        b_base = buf.ctypes.data
        best = np.empty((ROWS, 32), np.int32)  # per row: 16 lane maxima, 16 positions (_dot_rows)
        best_base = best.ctypes.data
        for r in range(m0, m1, ROWS):
            for f in range(frames):
                best[:, :16] = _NO_KEY
                best[:, 16:] = 0
                for p in range(0, n_pad, STEP):
                    _dot_rows(q_base + r * CHANNELS, k_base + (f * n_pad + p) * CHANNELS, c_base + (f * n_pad + p) * 4,
                              b_base + p * 4, stride, best_base, p)
                for i in range(min(ROWS, m - r)):
                    _merge_row(buf[i], b_base + i * stride, best_base + 128 * i, r + i, f, n, h, w, radius,
                               similarity_centre, centre, outside_key, k, list_key, list_index)

    @numba.njit(**_JIT)
    def _select(queries, keys, col, m, n, h, w, radius, similarity_centre, centre, outside_key, k, list_key,
                list_index):
        """_select_row_range over every query row, on one thread."""
        _select_row_range(queries, keys, col, 0, m, m, n, h, w, radius, similarity_centre, centre, outside_key, k,
                          list_key, list_index)

    @numba.njit(parallel=True, **_JIT)
    def _select_parallel(chunks, queries, keys, col, m, n, h, w, radius, similarity_centre, centre, outside_key, k,
                         list_key, list_index):
        """_select_row_range on numba's threads, the query rows in ``chunks`` ranges of whole steps."""
        steps = -(-m // ROWS)
        for c in numba.prange(chunks):
            m0 = c * steps // chunks * ROWS
            m1 = min((c + 1) * steps // chunks * ROWS, m)
            if m0 < m1:
                _select_row_range(queries, keys, col, m0, m1, m, n, h, w, radius, similarity_centre, centre,
                                  outside_key, k, list_key, list_index)


def select_frames(selector: "window_select.WindowSelector", queries: np.ndarray, keys,
                  col: np.ndarray, threads: Optional[int] = None) -> None:
    """Merge the candidates of every memory frame into ``selector`` (made with ``int_unit``; no
    frame added yet), as ``selector.add(q8 @ k8[t].T, t, offset[t])`` for each frame t would: the
    same kept lists and window centres.

    queries: :func:`pack_queries`; keys: :func:`pack_keys` (a tensor or its NumPy view); col:
    :func:`column_offsets`.  The selector's window must be at most 16 wide and it must keep fewer
    than :data:`LIST` candidates; threads: as the selector's (None: the selector's setting)."""
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy()
    if not available():
        raise RuntimeError("the fused int8 selection needs numba and a CPU with AVX-512 VNNI")
    m = selector.kept_key.shape[0]
    n = selector.h * selector.w
    frames, n_pad = col.shape
    if selector.int_unit is None or selector._dtype is not None:
        raise ValueError("select_frames needs a fresh selector made with int_unit")
    if 2 * selector.radius + 1 > 16:
        raise ValueError(f"the fused int8 selection handles windows up to 16 wide, not {2 * selector.radius + 1}")
    if n_pad != padded_positions(n) or keys.shape != (frames, n_pad * CHANNELS) or keys.dtype != np.int8:
        raise ValueError(f"packed keys {keys.shape} / offsets {col.shape} do not match a {selector.h}x{selector.w} map")
    if queries.shape != (-(-m // ROWS) * ROWS, CHANNELS) or queries.dtype != np.uint8:
        raise ValueError(f"packed queries {queries.shape} do not match {m} query positions")
    for a in (queries, keys, col):
        if not a.flags.c_contiguous:
            raise ValueError("the packed operands must be C-contiguous")
    k = selector.kept_key.shape[1]
    if k >= LIST:
        raise ValueError(f"the fused int8 selection keeps fewer than {LIST} candidates, not {k}")
    selector._start(np.dtype(np.int32), n)
    list_key = np.full((m, LIST), _NO_KEY, np.int32)
    list_index = np.zeros((m, LIST), np.int64)
    args = (queries, keys, col, m, n, selector.h, selector.w, selector.radius, selector.similarity_centre,
            selector.centre, selector._outside_key, k, list_key, list_index)
    t = threads_for_loop(threads if threads is not None else selector.threads)
    if t > 1:
        _select_parallel(t * _CHUNKS_PER_THREAD, *args)
    else:
        _select(*args)
    selector.kept_key[:] = list_key[:, :k]
    selector.kept_index[:] = list_index[:, :k]
    selector.count[:] = (list_key[:, :k] != _NO_KEY).sum(axis=1)
