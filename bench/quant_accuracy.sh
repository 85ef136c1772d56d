#!/usr/bin/env bash
# int8 accuracy on Fashion-MNIST: ours (`resnet quantize` + `resnet eval --precision int8`)
# against ONNX Runtime's static QDQ quantization, same checkpoints, same calibration images.
#
#   bench/quant_accuracy.sh CHECKPOINT.safetensors [...] [--data /tmp/fmnist] [--images 512] [--out bench/.work/quant]
#
# Sets up bench/.venv with the pinned versions of tools/requirements.txt (PyPI),
# builds the release binary, then runs bench/quant_accuracy.py. Results: a Markdown
# table on stdout and OUT/quant_accuracy.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/setup.sh
exec bench/.venv/bin/python bench/quant_accuracy.py "$@"
