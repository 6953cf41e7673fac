"""bfloat16 in numba kernels: values stored as their 16-bit patterns (uint16 arrays).

``widen(value)`` gives the float32 of a stored value (float32 as is; a uint16 as the bf16 bit
pattern, exactly: bits << 16).  ``narrow(value, like)`` gives a float32 as the element type of
the array ``like``: float32 as is, or for uint16 the bf16 rounded to nearest even, as torch
rounds (finite values).  Both compile to a few vector instructions inside vectorised loops.

``order_key(value)`` maps a stored float32 or bf16 value to a signed integer (int32 or int16)
that orders as the float does (NaN aside), so that maxima, argmaxima and comparisons run on
integers: 32 bf16 keys per AVX-512 vector instead of 16 floats.  The one difference from the
float order: -0.0 ranks just below +0.0.  ``key_value(key, like)`` is the inverse, the float32
of a key of the array ``like``'s element type; for an int32 ``like`` (integer similarities,
whose keys the window selection forms itself) the key as a float32.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy view (no copy) of a CPU tensor for the kernels: bfloat16 as its uint16 bit patterns."""
    return (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy()


def widen(value):  # pragma: no cover - compiled code uses the overload below
    """float32 of a stored value: float32 as is, uint16 as bfloat16 bits."""
    raise NotImplementedError("widen is for numba-compiled code")


def narrow(value, like):  # pragma: no cover - compiled code uses the overload below
    """A float32 as the element type of the array ``like``: float32, or uint16 bfloat16 bits."""
    raise NotImplementedError("narrow is for numba-compiled code")


def order_key(value):  # pragma: no cover - compiled code uses the overload below
    """Signed integer with the order of the stored float: int32 for float32, int16 for bf16 bits."""
    raise NotImplementedError("order_key is for numba-compiled code")


def key_value(key, like):  # pragma: no cover - compiled code uses the overload below
    """The float32 of an ``order_key`` of an element of the array ``like``."""
    raise NotImplementedError("key_value is for numba-compiled code")


if numba is not None:
    @intrinsic
    def _bits_to_f32(typingctx, u):
        """The float32 whose bit pattern is the uint32 u."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.uint32), codegen

    @intrinsic
    def _f32_to_bits(typingctx, f):
        """The bit pattern of the float32 f, as uint32."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return types.uint32(types.float32), codegen

    @overload(widen, inline="always")
    def _widen(value):
        if isinstance(value, types.Float):
            return lambda value: np.float32(value)
        if value == types.uint16:
            return lambda value: _bits_to_f32(np.uint32(value) << np.uint32(16))
        return None

    @overload(narrow, inline="always")
    def _narrow(value, like):
        if like.dtype == types.float32:
            return lambda value, like: np.float32(value)
        if like.dtype == types.uint16:
            def to_bf16(value, like):
                u = _f32_to_bits(np.float32(value))
                return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
            return to_bf16
        return None

    # Sign-magnitude to two's complement order: negative patterns get their magnitude bits
    # flipped (x ^ 0x7FFF... when the sign bit is set), which is its own inverse, so the same
    # flip makes a key from a bit pattern and a bit pattern from a key.

    @numba.njit(inline="always")
    def _flip32(i):
        return np.int32(i ^ ((i >> np.int32(31)) & np.int32(0x7FFFFFFF)))

    @numba.njit(inline="always")
    def _flip16(i):
        return np.int16(i ^ ((i >> np.int16(15)) & np.int16(0x7FFF)))

    @overload(order_key, inline="always")
    def _order_key(value):
        if value == types.float32:
            return lambda value: _flip32(np.int32(_f32_to_bits(value)))
        if value == types.uint16:
            return lambda value: _flip16(np.int16(value))
        return None

    @overload(key_value, inline="always")
    def _key_value(key, like):
        if like.dtype == types.float32:
            return lambda key, like: _bits_to_f32(np.uint32(_flip32(np.int32(key))))
        if like.dtype == types.uint16:
            return lambda key, like: _bits_to_f32(np.uint32(np.uint16(_flip16(np.int16(key)))) << np.uint32(16))
        if like.dtype == types.int32:
            return lambda key, like: np.float32(key)
        return None
