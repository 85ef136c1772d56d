#!/usr/bin/env python3
"""Checks `resnet export` with the ONNX tools: every exported model passes
`onnx.checker.check_model(full_check=True)` (shape inference included), and
onnxruntime gives our logits within 1e-4 relative, for a basic, a bottleneck,
a grouped, a wide, a CIFAR option-A and a pre-activation network, batch norms
kept and folded, at a dynamic and a fixed batch size.

    bench/.venv/bin/python tools/onnx_check.py          # after cargo build --release

Weights come from the fixtures' formula (tools/make_fixtures.py), so batch
norms have non-trivial statistics; our logits are `resnet bench --logits-out`
on the same formula input.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402

RESNET = os.path.join(os.path.dirname(__file__), "..", "target", "release", "resnet")
CASES = [("resnet18", 64), ("resnet50", 64), ("resnext50_32x4d", 64), ("wide_resnet50_2", 64), ("resnet20", 32),
         ("resnet110", 32), ("preact_resnet110", 32), ("preact_resnet164", 32)]


def main():
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for arch, side in CASES:
            model = mf.build(arch)
            mf.apply_formula(model)
            weights = os.path.join(tmp, f"{arch}.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
            mine = os.path.join(tmp, "ours.json")
            subprocess.run([RESNET, "bench", "--arch", arch, "--weights", weights, "--batch", "2", "--input",
                            str(side), "--iters", "1", "--warmup", "0", "--logits-out", mine], check=True,
                           capture_output=True)
            ours = np.array(json.load(open(mine)), dtype=np.float32)
            x = mf.formula_input([2, 3, side, side]).numpy()
            for fold, batch in [(False, "dynamic"), (True, "2")]:
                path = os.path.join(tmp, f"{arch}.onnx")
                cmd = [RESNET, "export", "--weights", weights, "--out", path, "--size", str(side), "--batch", batch]
                subprocess.run(cmd + (["--fold-bn"] if fold else []), check=True, capture_output=True)
                onnx.checker.check_model(onnx.load(path), full_check=True)
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                theirs = sess.run(["logits"], {"input": x})[0]
                err = float(np.abs(ours - theirs).max() / np.abs(ours).max())
                worst = max(worst, err)
                print(f"{arch:18s} fold {str(fold):5s} batch {batch:7s}: checker ok, "
                      f"max |ours - onnxruntime| / max |logit| = {err:.2e}", flush=True)
    print(f"worst {worst:.2e}")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
