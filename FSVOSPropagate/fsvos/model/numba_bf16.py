"""bfloat16 in numba kernels: values stored as their 16-bit patterns (uint16 arrays).

``widen(value)`` gives the float32 of a stored value (float32 as is; a uint16 as the bf16 bit
pattern, exactly: bits << 16).  ``narrow(value, like)`` gives a float32 as the element type of
the array ``like``: float32 as is, or for uint16 the bf16 rounded to nearest even, as torch
rounds (finite values).  Both compile to a few vector instructions inside vectorised loops.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def widen(value):  # pragma: no cover - compiled code uses the overload below
    """float32 of a stored value: float32 as is, uint16 as bfloat16 bits."""
    raise NotImplementedError("widen is for numba-compiled code")


def narrow(value, like):  # pragma: no cover - compiled code uses the overload below
    """A float32 as the element type of the array ``like``: float32, or uint16 bfloat16 bits."""
    raise NotImplementedError("narrow is for numba-compiled code")


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
