"""How many threads the engine's compiled loops (numba) run on.

The compiled loops (the local-window selection, the Winograd tile transforms) run between torch's
operations, whose OpenMP workers spin for a while after each one.  Measured on this project's
2-core machine right after a torch GEMM: a parallel loop on numba's OpenMP threading layer lost
0.15 ms to them, on numba's ``workqueue`` layer 1.7 ms, and a second Python thread beside them ran
the selection 1.7x slower.  So the loops run in parallel only on numba's OpenMP layer, which is put
first in numba's layer order (its default order puts TBB first) unless the environment sets
``NUMBA_THREADING_LAYER`` or ``NUMBA_THREADING_LAYER_PRIORITY``; the order is set when
:func:`threads` first runs, not on import.

Every kernel with a parallel variant gives bitwise the same result on any number of threads
(each output element is computed by one thread, in the same order); tests compare them.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

try:  # numba is a dependency; the engine has torch paths for environments without it
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

#: the threading layer numba started and the process that started it, once probed
_started: Optional[Tuple[str, int]] = None

if numba is not None:
    @numba.njit(parallel=True, cache=True)
    def _probe(out):
        """A trivial parallel loop: running it starts numba's threading layer."""
        for i in numba.prange(out.shape[0]):
            out[i] = i


def threads() -> int:
    """Threads for the compiled loops: torch's intra-op thread count (at most numba's), when numba's
    threading layer is OpenMP, in the process that started it; else 1.

    1 as well in a forked child of a process that started the OpenMP layer (GNU OpenMP is not
    fork-safe: numba ends a child that uses it), with one torch thread, or with
    ``FSVOS_COMPILED_THREADS=1`` in the environment.
    """
    global _started
    if numba is None or os.environ.get("FSVOS_COMPILED_THREADS") == "1":
        return 1
    import torch

    n = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if n <= 1:
        return 1
    if _started is None:
        if not any(v in os.environ for v in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")):
            numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
        try:
            _probe(np.zeros(2, np.int64))
            _started = (numba.threading_layer(), os.getpid())
        except Exception:  # no threading layer could start: the loops stay on one thread
            _started = ("none", os.getpid())
    layer, pid = _started
    return n if layer == "omp" and pid == os.getpid() else 1


def threads_for_loop(n: Optional[int] = None) -> int:
    """The threads for the next compiled loop of the calling thread: ``n``, or :func:`threads` when
    None; when more than 1, numba's next parallel loop is set to run on that many."""
    n = threads() if n is None else n
    if n > 1:
        numba.set_num_threads(n)
    return n
