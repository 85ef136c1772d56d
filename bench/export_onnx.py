#!/usr/bin/env python3
"""Loads our safetensors weights into the PyTorch model and exports ONNX (dynamic batch).

    export_onnx.py ARCH WEIGHTS.safetensors OUT.onnx INPUT_SIZE
"""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer import build  # noqa: E402


def main():
    arch, weights, out, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    model = build(arch, weights).eval()
    x = torch.zeros(1, 3, size, size)
    torch.onnx.export(model, (x,), out, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)


if __name__ == "__main__":
    main()
