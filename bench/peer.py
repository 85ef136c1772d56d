#!/usr/bin/env python3
"""One timed measurement of a peer engine, as `resnet bench --json` does for ours.

    peer.py --engine ort|ort-int8|torch|torch-cl --arch resnet50 [--weights w.safetensors] [--onnx m.onnx]
            --batch 16 --threads 2 --mode infer|train --input 224 --iters 20 --warmup 3 [--logits-out f.json]

ort and ort-int8 run the --onnx model (ort-int8: ONNX Runtime's QDQ int8 model from bench/ort_quant.py; the
engine name only labels the result).

Prints one JSON object: images_per_second, latency_ms_p50, latency_ms_p99, peak_rss_mb.
The input is the formula input of tools/make_fixtures.py (the same values `resnet bench` uses).
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))


def formula_input(shape):
    import make_fixtures as mf  # noqa: E402

    return mf.formula_input(shape).numpy()


def build(arch, weights):
    import torch
    import make_fixtures as mf
    from safetensors.torch import load_file

    model = mf.build(arch)
    if weights:
        model.load_state_dict(load_file(weights))
    return model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True, choices=["ort", "ort-int8", "torch", "torch-cl"])
    p.add_argument("--arch", required=True)
    p.add_argument("--weights", help="safetensors to load (default: the model's own random initialisation)")
    p.add_argument("--onnx")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", default="infer", choices=["infer", "train"])
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--logits-out")
    a = p.parse_args()
    if a.engine.startswith("ort") and not a.onnx:
        p.error(f"--engine {a.engine} needs --onnx")
    shape = [a.batch, 3, a.input, a.input]
    x = formula_input(shape)
    times = []
    if a.engine in ("ort", "ort-int8"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = lambda: sess.run(None, {name: x})[0]  # noqa: E731
        for _ in range(a.warmup):
            out = run()
        for _ in range(a.iters):
            t = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - t)
    else:
        import torch

        torch.set_num_threads(a.threads)
        torch.set_num_interop_threads(1)
        model = build(a.arch, a.weights)
        xt = torch.from_numpy(x)
        if a.engine == "torch-cl":
            model = model.to(memory_format=torch.channels_last)
            xt = xt.contiguous(memory_format=torch.channels_last)
        if a.mode == "infer":
            model.eval()

            def run():
                with torch.inference_mode():
                    return model(xt)
        else:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            classes = model.fc.out_features
            labels = torch.arange(a.batch) % classes
            loss_fn = torch.nn.CrossEntropyLoss()

            def run():
                opt.zero_grad(set_to_none=True)
                out = model(xt)
                loss_fn(out, labels).backward()
                opt.step()
                return out
        for _ in range(a.warmup):
            out = run()
        for _ in range(a.iters):
            t = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - t)
        out = out.detach().numpy() if hasattr(out, "detach") else out
    times_ms = sorted(1e3 * t for t in times)
    pick = lambda q: times_ms[min(len(times_ms) - 1, round(q * (len(times_ms) - 1)))]  # noqa: E731
    if a.logits_out:
        with open(a.logits_out, "w") as f:
            json.dump(np.asarray(out, dtype=np.float64).reshape(a.batch, -1).tolist(), f)
    print(json.dumps({
        "engine": a.engine, "arch": a.arch, "batch": a.batch, "threads": a.threads, "mode": a.mode,
        "images_per_second": a.batch * len(times) / sum(times),
        "latency_ms_p50": pick(0.5), "latency_ms_p99": pick(0.99),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
