#!/usr/bin/env bash
# Set up (venv, Python packages, the DICOM validator dciodvfy from Debian's dicom3tools), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# system packages the tests use: dciodvfy (Debian's dicom3tools) validates DICOM output; the vtk
# wheel under slicer-core needs libGL and X client libraries even without a display
NEED=""
command -v dciodvfy >/dev/null 2>&1 || NEED="$NEED dicom3tools"
LIBS="$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)"
if [ -n "$LIBS" ]; then
  grep -q "libGL.so.1" <<<"$LIBS" || NEED="$NEED libgl1"
  grep -q "libXrender.so.1" <<<"$LIBS" || NEED="$NEED libxrender1"
  grep -q "libXext.so.6" <<<"$LIBS" || NEED="$NEED libxext6"
  # GNU OpenMP for numba's OpenMP threading layer: the engine's compiled loops run on two threads
  # only there (fsvos/numba_threads.py), and the tests of that path need it
  grep -q "libgomp.so.1" <<<"$LIBS" || NEED="$NEED libgomp1"
fi
if [ -n "$NEED" ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $NEED >/dev/null \
      || echo "warning: could not install$NEED; the tests that need them will be skipped" >&2
  else
    echo "warning: no apt-get; missing$NEED; the tests that need them will be skipped" >&2
  fi
fi
.venv/bin/python -m pytest Testing -q "$@"
