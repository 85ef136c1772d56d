#!/usr/bin/env bash
# Side-by-side speed comparison: `resnet bench` against ONNX Runtime and PyTorch
# on the same random-weight networks, alternating runs, medians and ratios.
#
#   bench/compare.sh [--runs 5] [--only "resnet50"] [--seconds 3]
#
# Sets up bench/.venv with the pinned versions of tools/requirements.txt (PyPI),
# builds the release binary, then runs bench/compare.py. Results: a Markdown
# table on stdout and bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/setup.sh
exec bench/.venv/bin/python bench/compare.py "$@"
