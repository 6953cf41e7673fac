#!/usr/bin/env bash
# Set up, then run the main job on the bundled default: a synthetic XA cine is made, its support frame
# propagated to every frame with the bundled default model, and a DICOM-SEG, the labels and a
# picture are written to demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fsvos demo demo-output "$@"
