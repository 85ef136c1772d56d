#!/usr/bin/env bash
# Training memory side by side with PyTorch (see bench/train_memory.py):
#
#   bench/train_memory.sh [--runs 2] [--only resnet1202] [--threads 2]
#
# Sets up bench/.venv as bench/compare.sh does, builds the release binary, then
# runs bench/train_memory.py. Results: a Markdown table on stdout and
# bench/train_memory.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/setup.sh
exec bench/.venv/bin/python bench/train_memory.py "$@"
