"""Blocks of 16 channels as LLVM vectors, for numba intrinsics that numba's loop vectoriser cannot make.

A kernel that reads 36 channel vectors and writes 36 others per step (a Winograd tile transform)
does not vectorise as a numba loop: LLVM would need a runtime alias check between every input and
output slice, and gives up.  Here such a step is written directly as LLVM IR on ``<16 x float>``
values: :func:`load` and :func:`store` move 16 consecutive channels of float32 or bfloat16 (its
16-bit patterns) between memory and float32 lanes, :func:`combine` forms a linear combination with
constant coefficients, :func:`maximum` is numba's ``max(x, lo)``.  The arithmetic is the scalar
code's, operation for operation (no fused multiply-adds, which LLVM forms only when asked), so a
kernel built from these gives bitwise the result of the same formulas in a numba loop.

The same module serves integer kernels (:mod:`fsvos.inference.int8_select`): :func:`int_lanes`
and :func:`splat_value` make integer vectors of any width.

Addresses are plain integers (``array.ctypes.data`` plus byte offsets): the caller keeps the arrays
alive.  Everything here is code generation for numba's ``@intrinsic``; nothing runs on import.
"""

from __future__ import annotations

from typing import Sequence

from llvmlite import ir

#: channels per block (one AVX-512 register of float32)
LANES = 16

F32 = ir.FloatType()
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
VF32 = ir.VectorType(F32, LANES)
VI16 = ir.VectorType(I16, LANES)
VI32 = ir.VectorType(I32, LANES)


def int_lanes(values: Sequence[int], lane: ir.IntType = I32) -> ir.Constant:
    """A constant integer vector with the given lanes (int32 unless ``lane`` says otherwise)."""
    return ir.Constant(ir.VectorType(lane, len(values)), [ir.Constant(lane, v) for v in values])


def _splat_i32(value: int) -> ir.Constant:
    return int_lanes([value] * LANES)


def splat(value: float) -> ir.Constant:
    """A constant float32 vector."""
    return ir.Constant(VF32, [ir.Constant(F32, float(value))] * LANES)


def splat_value(builder: ir.IRBuilder, value: ir.Value, vtype: ir.VectorType = VF32) -> ir.Value:
    """A vector of type ``vtype`` (default 16 float32) with every lane the run-time scalar ``value``."""
    one = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined), int_lanes([0] * vtype.count))


def address(builder: ir.IRBuilder, table: ir.Value, index: int, offset: ir.Value) -> ir.Value:
    """table[index] + offset: an entry of an int64 address table (a pointer) plus a byte offset."""
    return builder.add(builder.load(builder.gep(table, [ir.Constant(I64, index)])), offset)


def load(builder: ir.IRBuilder, addr: ir.Value, bf16: bool) -> ir.Value:
    """16 consecutive float32 values at the integer address ``addr``, or 16 bfloat16 bit patterns
    widened exactly to float32 (bits << 16)."""
    if not bf16:
        return builder.load(builder.inttoptr(addr, VF32.as_pointer()), align=4)
    bits = builder.load(builder.inttoptr(addr, VI16.as_pointer()), align=2)
    return builder.bitcast(builder.shl(builder.zext(bits, VI32), _splat_i32(16)), VF32)


def store(builder: ir.IRBuilder, value: ir.Value, addr: ir.Value, bf16: bool) -> None:
    """Store 16 float32 lanes at ``addr`` as float32, or as bfloat16 rounded to nearest even as
    torch rounds (``(u + 0x7FFF + ((u >> 16) & 1)) >> 16`` of the bit pattern u, as
    :func:`fsvos.model.numba_bf16.narrow`)."""
    if not bf16:
        builder.store(value, builder.inttoptr(addr, VF32.as_pointer()), align=4)
        return
    u = builder.bitcast(value, VI32)
    odd = builder.and_(builder.lshr(u, _splat_i32(16)), _splat_i32(1))
    rounded = builder.lshr(builder.add(builder.add(u, _splat_i32(0x7FFF)), odd), _splat_i32(16))
    builder.store(builder.trunc(rounded, VI16), builder.inttoptr(addr, VI16.as_pointer()), align=2)


def combine(builder: ir.IRBuilder, coefs: Sequence[float], values: Sequence[ir.Value]) -> ir.Value:
    """sum_j coefs[j] * values[j], zero terms skipped, evaluated left to right as the source
    ``c0 * v0 + c1 * v1 - ...`` would be: a coefficient of +-1 adds or subtracts the value, others
    multiply by |c| first; a negative first term is negated."""
    total = None
    for c, v in zip(coefs, values):
        c = float(c)
        if c == 0.0:
            continue
        term = v if abs(c) == 1.0 else builder.fmul(splat(abs(c)), v)
        if total is None:
            total = builder.fneg(term) if c < 0 else term
        else:
            total = builder.fsub(total, term) if c < 0 else builder.fadd(total, term)
    if total is None:
        raise ValueError("combine: every coefficient is zero")
    return total


def maximum(builder: ir.IRBuilder, x: ir.Value, lo: ir.Value) -> ir.Value:
    """numba's ``max(x, lo)`` lane by lane: ``lo if lo > x else x`` (a NaN x stays NaN)."""
    return builder.select(builder.fcmp_ordered(">", lo, x), lo, x)
