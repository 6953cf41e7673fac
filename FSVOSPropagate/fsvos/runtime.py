"""Process-wide settings for the engine's command-line processes.

:func:`tune_allocator` keeps large freed blocks in glibc's heap.  By default glibc serves
blocks above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives the heap's
free top back to the system, so every large activation of a frame (a 3-object decoder map of
the paper's network is 25-50 MB) is page-faulted and zeroed again: measured here, the paper's
network in bf16 gains 10% frames/s (1.07-1.10 -> 1.20-1.21, ``fsvos bench --arch xravos``).
It is called by ``fsvos`` (and so by the Slicer module's out-of-process runs), never on import:
a library must not change its host's allocator.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum: blocks up to this size come from the heap
TRIM_THRESHOLD_BYTES = 1 << 30  # free heap top kept before it is given back to the system
TOP_PAD_BYTES = 64 << 20  # extra heap requested each time the heap grows


def tune_allocator() -> bool:
    """Set glibc's malloc thresholds for large tensors; True if they were set.

    A no-op (False) outside Linux/glibc, or when the environment variable ``FSVOS_MALLOPT`` is
    ``0``.  Costs no extra peak memory: freed blocks are reused, only returned to the system later.
    """
    if os.environ.get("FSVOS_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                                                (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                                                (_M_TOP_PAD, TOP_PAD_BYTES)))


def native_bf16(device="cpu") -> bool:
    """True if ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX-BF16 (read from /proc/cpuinfo; False where that cannot be read, so other
    systems choose fp32).  Without native support, oneDNN emulates bf16 and it is slower than fp32."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    return _cpu_has_bf16()


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device, meta=None) -> str:
    """The network precision a run uses: ``precision`` itself unless it is "auto", which is bf16
    where the device computes it natively AND the weights' metadata lists bf16 among its
    ``validated_precisions`` (J&F checked against fp32; the bundled default), else fp32."""
    if precision != "auto":
        return precision
    validated = (meta or {}).get("validated_precisions") or ()
    return "bf16" if "bf16" in validated and native_bf16(device) else "fp32"
