"""ONNX Runtime's time per node, to set beside `resnet bench --profile`.

Runs an exported model (bench/compare.sh leaves them in bench/.work/, e.g. resnet50-224.onnx) with the
same session options as bench/peer.py, profiling on, and prints each node's median kernel time over
the timed runs, in execution order, then their sum:

    bench/.venv/bin/python tools/ort_profile.py bench/.work/resnet50-224.onnx --threads 2 --iters 30
    target/release/resnet bench --arch resnet50 --batch 1 --threads 2 --iters 30 --profile

ONNX Runtime fuses each convolution with its batch norm, residual add and ReLU, as our plans do, so
the rows pair up one to one (its node names say which torchvision layer each is). Run the two
alternately a few times and compare per-layer minimums: the machine's speed drifts.
"""

import argparse
import collections
import json
import os
import statistics
import tempfile

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [a.batch] + [d for d in inp.shape[1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(5):
        sess.run(None, {inp.name: x})
    for _ in range(a.iters):
        sess.run(None, {inp.name: x})
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    times = collections.OrderedDict()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1000)
    total = 0.0
    for name, ms in times.items():
        m = statistics.median(ms[-a.iters :])
        total += m
        print(f"{m:8.3f}  {name}")
    print(f"{total:8.3f}  total (ms, medians of {a.iters} runs, {a.threads} threads, batch {a.batch})")


if __name__ == "__main__":
    main()
