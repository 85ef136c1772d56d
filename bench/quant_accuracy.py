#!/usr/bin/env python3
"""Accuracy of int8 inference on Fashion-MNIST: ours (`resnet quantize` + `resnet eval --precision int8`) against
ONNX Runtime's static QDQ quantization of the same network, calibrated on the same training images.

    quant_accuracy.py CHECKPOINT.safetensors [...] [--data /tmp/fmnist] [--images 512] [--out bench/.work/quant]
                      [--threads 2] [--method percentile:99.99|minmax] [--exporter ours|torch] [--ort-f32-classifier]

Invoked by bench/quant_accuracy.sh, which prepares the virtual environment and the binary (RESNET_BIN, default
target/release/resnet). Each checkpoint needs its model card beside it (W.json: spec and transform; our
`resnet train` checkpoints have one).

For each checkpoint:
  ours: `resnet quantize --calibrate fashion-mnist:DATA --images N` (the training images i * 60000 / N), then
        `resnet eval` in f32 and int8 with --predictions;
  ORT:  `resnet export --fold-bn` (or the PyTorch builder of tools/make_fixtures.py with --exporter torch),
        quant_pre_process, quantize_static (QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax) calibrated
        on the same N training images, preprocessed as ours: (pixel / 255 - mean) / std, 1 x 28 x 28;
        top-1 of ORT f32 and int8 on the 10000 test images.
Prints a Markdown table and writes OUT/quant_accuracy.json (all numbers, versions, date).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESNET = os.environ.get("RESNET_BIN", os.path.join(ROOT, "target", "release", "resnet"))
sys.path.insert(0, HERE)

import ort_quant as oq  # noqa: E402


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


def card(weights):
    path = os.path.splitext(weights)[0] + ".json"
    if not os.path.exists(path):
        sys.exit(f"error: {weights} has no model card {path} (spec and transform are needed)")
    model = json.load(open(path))["model"]
    return model["spec"], model["transform"]


def names_for(paths):
    """A short unique name per checkpoint: its folder's name for best/last.safetensors, else the file's stem."""
    out = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        folder = os.path.basename(os.path.dirname(os.path.abspath(p)))
        name = folder if stem in ("best", "last") else stem
        if name in out:
            name = f"{folder}-{stem}"
        out.append(name)
    return out


def read_predictions(path):
    return np.loadtxt(path, dtype=np.int64).reshape(-1)


def export(exporter, weights, spec, side, out):
    if exporter == "ours":
        sh([RESNET, "export", "--weights", weights, "--out", out, "--fold-bn"])
        return
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import make_fixtures as mf

    model = mf.SpecNet(spec)
    model.load_state_dict(load_file(weights))
    model.eval()
    x = torch.zeros(1, spec["in_channels"], side, side)
    torch.onnx.export(model, (x,), out, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)


def one(weights, name, a, train_x, test_x_u8, test_y):
    spec, transform = card(weights)
    arch = spec["name"]
    if spec["in_channels"] != 1 or transform.get("crop") != 28 or transform.get("resize") != 28:
        sys.exit(f"error: {weights}: expected a 1-channel 28x28 Fashion-MNIST model, the card says "
                 f"in_channels {spec['in_channels']}, resize {transform.get('resize')}, crop {transform.get('crop')}")
    mean, std = transform["mean"][0], transform["std"][0]
    data = f"fashion-mnist:{a.data}"
    t = {}
    r = {"network": arch, "name": name, "weights": os.path.abspath(weights), "mean": mean, "std": std}
    print(f"{name} ({arch}):", flush=True)

    # Ours.
    w8 = os.path.join(a.out, f"{name}-int8.safetensors")
    cmd = [RESNET, "quantize", "--weights", weights, "--calibrate", data, "--images", str(a.images), "--out", w8,
           "--threads", str(a.threads)]
    if a.method:
        cmd += ["--method", a.method]
    t0 = time.perf_counter()
    sh(cmd)
    t["ours_quantize_s"] = time.perf_counter() - t0
    r["ours_int8_weights"] = os.path.abspath(w8)
    r["ours_method"] = json.load(open(os.path.splitext(w8)[0] + ".json")).get("quantization", {}).get("method", a.method)
    evals, preds = {}, {}
    for prec, w in [("f32", weights), ("int8", w8)]:
        pred = os.path.join(a.out, f"{name}-ours-{prec}.predictions")
        t0 = time.perf_counter()
        evals[prec] = json.loads(sh([RESNET, "eval", "--weights", w, "--data", data, "--precision", prec, "--json",
                                     "--out", os.path.join(a.out, f"{name}-eval-{prec}"), "--predictions", pred,
                                     "--threads", str(a.threads)]))
        t[f"ours_eval_{prec}_s"] = time.perf_counter() - t0
        preds[prec] = read_predictions(pred)
        if len(preds[prec]) != len(test_y):
            sys.exit(f"error: {pred} has {len(preds[prec])} predictions for {len(test_y)} test images")
        # Our eval's top-1 and the one recomputed from its predictions must agree.
        own = float((preds[prec] == test_y).mean())
        if abs(own - evals[prec]["top1"]) > 1e-9:
            print(f"  warning: ours {prec}: eval says top-1 {evals[prec]['top1']}, its predictions give {own}")
    r["ours_f32_top1"] = evals["f32"]["top1"]
    r["ours_int8_top1"] = evals["int8"]["top1"]
    r["ours_agreement_int8_f32"] = float((preds["int8"] == preds["f32"]).mean())
    print(f"  ours: f32 {r['ours_f32_top1']:.4f}, int8 {r['ours_int8_top1']:.4f}, agreement "
          f"{r['ours_agreement_int8_f32']:.4f}", flush=True)

    # ONNX Runtime.
    f32_onnx = os.path.join(a.out, f"{name}.onnx")
    int8_onnx = os.path.join(a.out, f"{name}-ort-int8{'-f32fc' if a.ort_f32_classifier else ''}.onnx")
    t0 = time.perf_counter()
    export(a.exporter, weights, spec, 28, f32_onnx)
    t["export_s"] = time.perf_counter() - t0
    idx = oq.spread(len(train_x), a.images)
    calib = oq.normalize_gray(train_x[idx], mean, std)
    t0 = time.perf_counter()
    oq.quantize_qdq(f32_onnx, int8_onnx, calib, batch=64,
                    exclude_ops=("Gemm", "MatMul") if a.ort_f32_classifier else ())
    t["ort_quantize_s"] = time.perf_counter() - t0
    test_x = oq.normalize_gray(test_x_u8, mean, std)
    ort_preds = {}
    for prec, path in [("f32", f32_onnx), ("int8", int8_onnx)]:
        t0 = time.perf_counter()
        ort_preds[prec] = oq.predict(oq.session(path, a.threads), test_x, batch=a.batch)
        t[f"ort_eval_{prec}_s"] = time.perf_counter() - t0
    r["ort_f32_onnx"], r["ort_int8_onnx"] = os.path.abspath(f32_onnx), os.path.abspath(int8_onnx)
    r["ort_f32_top1"] = float((ort_preds["f32"] == test_y).mean())
    r["ort_int8_top1"] = float((ort_preds["int8"] == test_y).mean())
    r["ort_agreement_int8_f32"] = float((ort_preds["int8"] == ort_preds["f32"]).mean())
    r["agreement_ort_f32_ours_f32"] = float((ort_preds["f32"] == preds["f32"]).mean())
    r["agreement_ort_int8_ours_int8"] = float((ort_preds["int8"] == preds["int8"]).mean())
    r["seconds"] = t
    print(f"  ORT:  f32 {r['ort_f32_top1']:.4f}, int8 {r['ort_int8_top1']:.4f}, agreement "
          f"{r['ort_agreement_int8_f32']:.4f}", flush=True)
    print(f"  sanity: ORT f32 agrees with our f32 on {r['agreement_ort_f32_ours_f32']:.4f} of the test images "
          f"(ORT int8 with our int8: {r['agreement_ort_int8_ours_int8']:.4f})", flush=True)
    if r["agreement_ort_f32_ours_f32"] < 0.995:
        print(f"  warning: ORT f32 and our f32 disagree on {1 - r['agreement_ort_f32_ours_f32']:.2%} of the images:"
              f" the export or the preprocessing differs", flush=True)
    return r


def pct(x):
    return f"{100 * x:.2f}%"


def pp(x):
    return f"{100 * x:+.2f} pp"


def print_table(results, meta):
    print(f"\nint8 accuracy on Fashion-MNIST (10000 test images), calibrated on {meta['images']} training images; "
          f"ours {meta['resnet']} ({meta['ours_method']}, classifier f32), onnxruntime {meta['onnxruntime']} "
          f"({meta['ort_settings']})\n")
    print("| network | f32 top-1 (ours) | int8 top-1 (ours) | Δ | agreement ours int8 vs f32 | ORT f32 top-1 "
          "| ORT int8 top-1 | Δ | agreement ORT int8 vs ORT f32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        net = r["network"] if r["name"] == r["network"] else f"{r['network']} ({r['name']})"
        cells = [net, pct(r["ours_f32_top1"]), pct(r["ours_int8_top1"]), pp(r["ours_int8_top1"] - r["ours_f32_top1"]),
                 pct(r["ours_agreement_int8_f32"]), pct(r["ort_f32_top1"]), pct(r["ort_int8_top1"]),
                 pp(r["ort_int8_top1"] - r["ort_f32_top1"]), pct(r["ort_agreement_int8_f32"])]
        print("| " + " | ".join(cells) + " |")
    print("\nSanity: agreement of ORT f32 with our f32 (should be ~100%): "
          + ", ".join(f"{r['name']} {pct(r['agreement_ort_f32_ours_f32'])}" for r in results))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", help="f32 checkpoints (.safetensors with their .json model cards)")
    p.add_argument("--data", default="/tmp/fmnist", help="folder of the Fashion-MNIST idx(.gz) files")
    p.add_argument("--images", type=int, default=512, help="calibration images (training split, spread evenly)")
    p.add_argument("--out", default=os.path.join(HERE, ".work", "quant"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=256, help="images per ORT evaluation pass")
    p.add_argument("--method", help="our activation thresholds (resnet quantize --method; default: its default)")
    p.add_argument("--exporter", choices=["ours", "torch"], default="ours",
                   help="f32 ONNX from `resnet export --fold-bn` or from the PyTorch builder of tools/make_fixtures.py")
    p.add_argument("--ort-f32-classifier", action="store_true",
                   help="keep ORT's classifier (Gemm) in f32, as our int8 path does (default: ORT quantizes it)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train_x, _ = oq.fashion_mnist(a.data, "train")
    test_x, test_y = oq.fashion_mnist(a.data, "test")
    results = [one(w, n, a, train_x, test_x, test_y) for w, n in zip(a.checkpoints, names_for(a.checkpoints))]

    import onnx
    import onnxruntime

    methods = sorted({r["ours_method"] for r in results})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "resnet": sh([RESNET, "--version"]).strip(), "resnet_bin": RESNET,
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "data": os.path.abspath(a.data), "images": a.images, "threads": a.threads,
            "ours_method": ", ".join(methods), "exporter": a.exporter,
            "ort_settings": "quant_pre_process; quantize_static QDQ, per_channel, QInt8 weights, QUInt8 activations, "
                            "MinMax" + ("; classifier (Gemm) kept f32" if a.ort_f32_classifier else "")}
    path = os.path.join(a.out, "quant_accuracy.json")
    json.dump({"meta": meta, "results": results}, open(path, "w"), indent=1)
    print_table(results, meta)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
