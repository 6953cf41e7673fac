#!/usr/bin/env bash
# Set up (venv, Python packages, the DICOM validator dciodvfy from Debian's dicom3tools), then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v dciodvfy >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dicom3tools >/dev/null \
      || echo "warning: could not install dicom3tools; DICOM validation tests will be skipped" >&2
  fi
fi
.venv/bin/python -m pytest Testing -q "$@"
