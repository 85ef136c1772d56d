#!/usr/bin/env python3
"""Runs `resnet bench` and the peers (ONNX Runtime, PyTorch NCHW and channels-last)
alternately on the same random-weight networks and prints medians and ratios.

Invoked by bench/compare.sh, which prepares the virtual environment and the binary.
Options: --runs N (timed runs per engine, default 5), --only SUBSTRING (a workload's exact name selects that row
alone), --seconds S (per timed run).

The int8 rows run `resnet bench --precision int8` on weights quantized once per architecture by `resnet quantize`
(calibrated on the 24 images of tests/fixtures/images), against ONNX Runtime's static QDQ int8 model of the same
network calibrated on the same images (bench/ort_quant.py), ORT f32 and our own f32; `--only int8` selects them.

With RESNET_BASE=PATH (another build of `resnet`, e.g. the commit before a change), every round also runs that
binary right after ours, and the tables get an "ours / base" column: the A/B comparison of bench/ab.sh, for
every row.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, ".work")
RESNET = os.environ.get("RESNET_BIN", os.path.join(ROOT, "target", "release", "resnet"))
BASE = os.environ.get("RESNET_BASE")
PY = sys.executable
CALIBRATION = os.path.join(ROOT, "tests", "fixtures", "images")
INT8_PEERS = ["ort-int8", "ort", "ours-f32"]

# name, arch, batch, threads, mode, input side, peers[, our precision]; "ours-f32" is our own f32 run
WORKLOADS = [
    ("resnet50 inference, batch 1", "resnet50", 1, 2, "infer", 224, ["ort", "torch", "torch-cl"]),
    ("resnet50 inference, batch 16", "resnet50", 16, 2, "infer", 224, ["ort", "torch", "torch-cl"]),
    ("resnet18 inference, batch 1", "resnet18", 1, 2, "infer", 224, ["ort", "torch", "torch-cl"]),
    ("resnet18 inference, batch 16", "resnet18", 16, 2, "infer", 224, ["ort", "torch", "torch-cl"]),
    ("resnet50 inference, batch 1, 1 thread", "resnet50", 1, 1, "infer", 224, ["ort", "torch", "torch-cl"]),
    ("resnet18 inference, batch 1, 1 thread", "resnet18", 1, 1, "infer", 224, ["ort", "torch", "torch-cl"]),
    ("resnet20 (CIFAR, 32x32) training step, batch 128", "resnet20", 128, 2, "train", 32, ["torch", "torch-cl"]),
    ("resnet18 training step, 224x224, batch 16", "resnet18", 16, 2, "train", 224, ["torch", "torch-cl"]),
    ("resnet50 inference, batch 16, bf16", "resnet50", 16, 2, "infer", 224, ["ours-f32", "ort"], "bf16"),
    ("resnet50 inference, batch 1, bf16", "resnet50", 1, 2, "infer", 224, ["ours-f32", "ort"], "bf16"),
    ("resnet18 inference, batch 16, bf16", "resnet18", 16, 2, "infer", 224, ["ours-f32", "ort"], "bf16"),
    ("resnet50 inference, batch 16, int8", "resnet50", 16, 2, "infer", 224, INT8_PEERS, "int8"),
    ("resnet50 inference, batch 1, int8", "resnet50", 1, 2, "infer", 224, INT8_PEERS, "int8"),
    ("resnet18 inference, batch 16, int8", "resnet18", 16, 2, "infer", 224, INT8_PEERS, "int8"),
    ("resnet18 inference, batch 1, int8", "resnet18", 1, 2, "infer", 224, INT8_PEERS, "int8"),
    ("resnet50 inference, batch 1, 1 thread, int8", "resnet50", 1, 1, "infer", 224, INT8_PEERS, "int8"),
    ("resnet18 inference, batch 1, 1 thread, int8", "resnet18", 1, 1, "infer", 224, INT8_PEERS, "int8"),
]


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


def ours(arch, weights, batch, threads, mode, side, iters, precision="f32", logits=None, binary=RESNET):
    cmd = [binary, "bench", "--arch", arch, "--weights", weights, "--batch", str(batch), "--threads", str(threads),
           "--mode", mode, "--input", str(side), "--iters", str(iters), "--precision", precision, "--json"]
    if logits:
        cmd += ["--logits-out", logits]
    return json.loads(sh(cmd))


def peer(engine, arch, weights, onnx, batch, threads, mode, side, iters, logits=None):
    cmd = [PY, os.path.join(HERE, "peer.py"), "--engine", engine, "--arch", arch, "--weights", weights, "--batch",
           str(batch), "--threads", str(threads), "--mode", mode, "--input", str(side), "--iters", str(iters)]
    if onnx:
        cmd += ["--onnx", onnx]
    if logits:
        cmd += ["--logits-out", logits]
    return json.loads(sh(cmd))


def prepare(arch, side):
    os.makedirs(WORK, exist_ok=True)
    w = os.path.join(WORK, f"{arch}.safetensors")
    if not os.path.exists(w):
        sh([RESNET, "init", "--arch", arch, "--out", w, "--seed", "0"])
    onnx = os.path.join(WORK, f"{arch}-{side}.onnx")
    if not os.path.exists(onnx):
        sh([PY, os.path.join(HERE, "export_onnx.py"), arch, w, onnx, str(side)])
    return w, onnx


def prepare_int8(arch, w, onnx, side):
    """Our int8 weights (`resnet quantize`) and ORT's QDQ int8 model, both calibrated on tests/fixtures/images."""
    w8 = os.path.join(WORK, f"{arch}-int8.safetensors")
    if not os.path.exists(w8):
        sh([RESNET, "quantize", "--weights", w, "--arch", arch, "--calibrate", CALIBRATION, "--images", "24",
            "--out", w8])
    onnx8 = os.path.join(WORK, f"{arch}-{side}-int8.onnx")
    if not os.path.exists(onnx8):
        sh([PY, os.path.join(HERE, "ort_quant.py"), onnx, onnx8, "--images", CALIBRATION, "--count", "24"])
    return w8, onnx8


def int8_check(arch, w, w8, onnx, onnx8, threads, side, batch=8):
    """Informational: top-1 agreement and max |logit difference| / max(1, |logit|) of the int8 engines against f32
    on the bench input (random weights, so the figures say little about accuracy; see bench/quant_accuracy.py)."""
    logits = {}
    for key, run in [("ours int8", lambda f: ours(arch, w8, batch, threads, "infer", side, 1, precision="int8", logits=f)),
                     ("ours f32", lambda f: ours(arch, w, batch, threads, "infer", side, 1, logits=f)),
                     ("ORT int8", lambda f: peer("ort-int8", arch, w, onnx8, batch, threads, "infer", side, 1, logits=f)),
                     ("ORT f32", lambda f: peer("ort", arch, w, onnx, batch, threads, "infer", side, 1, logits=f))]:
        f = os.path.join(WORK, key.replace(" ", "-").lower() + ".json")
        run(f)
        logits[key] = json.load(open(f))
    top1 = lambda rows: [max(range(len(r)), key=r.__getitem__) for r in rows]  # noqa: E731
    out = {}
    for a, b in [("ours int8", "ours f32"), ("ORT int8", "ORT f32"), ("ours int8", "ORT int8"), ("ours f32", "ORT f32")]:
        agree = sum(x == y for x, y in zip(top1(logits[a]), top1(logits[b]))) / batch
        d = max_rel_diff(logits[a], logits[b])
        out[f"{a} vs {b}"] = {"top1_agreement": agree, "max_rel_logit_diff": d}
        print(f"{arch}: {a} vs {b} (bench input, batch {batch}): top-1 agreement {agree:.2f}, "
              f"max |logit difference| / max(1, |logit|) = {d:.2e}", flush=True)
    return out


def rel_l2(a, b):
    a = [x for row in a for x in row]
    b = [x for row in b for x in row]
    return (sum((x - y) ** 2 for x, y in zip(a, b)) / max(1e-30, sum(y * y for y in b))) ** 0.5


def max_rel_diff(a, b):
    a = [x for row in a for x in row]
    b = [x for row in b for x in row]
    scale = max(1.0, max(abs(x) for x in b))
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", default="")
    p.add_argument("--seconds", type=float, default=3.0, help="target seconds per timed run")
    p.add_argument("--json-out", default=os.path.join(HERE, "results.json"))
    a = p.parse_args()
    results = []
    checked = set()
    int8_checks = {}
    # An exact workload name selects that row alone ("..., batch 1" would also match "..., batch 16").
    exact = any(w[0] == a.only for w in WORKLOADS)
    for name, arch, batch, threads, mode, side, peers, *prec in WORKLOADS:
        if a.only and (name != a.only if exact else a.only not in name):
            continue
        precision = prec[0] if prec else "f32"
        w, onnx = prepare(arch, side)
        # The weights of our timed runs and the model of each ONNX Runtime peer.
        mine_w, onnxs = w, {"ort": onnx}
        if precision == "int8":
            mine_w, onnxs["ort-int8"] = prepare_int8(arch, w, onnx, side)
            if arch not in int8_checks:
                int8_checks[arch] = int8_check(arch, w, mine_w, onnx, onnxs["ort-int8"], threads, side)
        elif precision != "f32":
            # bf16 against the f32 peers: relative L2 error of the logits (the 1e-2 bound).
            mine = os.path.join(WORK, "ours-bf16.json")
            ours(arch, w, 2, threads, "infer", side, 1, precision=precision, logits=mine)
            theirs = os.path.join(WORK, "ort.json")
            peer("ort", arch, w, onnx, 2, threads, "infer", side, 1, logits=theirs)
            d = rel_l2(json.load(open(mine)), json.load(open(theirs)))
            print(f"{arch}: ours {precision} vs ort f32: relative L2 error of the logits = {d:.2e}", flush=True)
            if d > 1e-2:
                sys.exit(f"error: {precision} outputs too far from f32 for {arch}: {d}")
        # Do the engines agree? (once per architecture, inference, batch 2)
        if mode == "infer" and arch not in checked:
            checked.add(arch)
            mine = os.path.join(WORK, "ours.json")
            ours(arch, w, 2, threads, "infer", side, 1, logits=mine)
            ref = json.load(open(mine))
            for e in ["ort", "torch"]:
                theirs = os.path.join(WORK, f"{e}.json")
                peer(e, arch, w, onnx, 2, threads, "infer", side, 1, logits=theirs)
                d = max_rel_diff(ref, json.load(open(theirs)))
                print(f"{arch}: ours vs {e}: max |logit difference| / max(1, |logit|) = {d:.2e}", flush=True)
                if d > 1e-3:
                    sys.exit(f"error: outputs disagree for {arch} ({e}): {d}")
        # Size the runs from one quick measurement of ours.
        probe = ours(arch, mine_w, batch, threads, mode, side, 2, precision=precision)
        iters = max(3, min(200, int(a.seconds * probe["images_per_second"] / batch)))
        rows = {"ours": []}
        for r in range(a.runs):
            rows["ours"].append(ours(arch, mine_w, batch, threads, mode, side, iters, precision=precision))
            if BASE:
                rows.setdefault("base", []).append(ours(arch, mine_w, batch, threads, mode, side, iters, precision=precision, binary=BASE))
            for e in peers:
                if e == "ours-f32":
                    rows.setdefault(e, []).append(ours(arch, w, batch, threads, mode, side, iters))
                else:
                    rows.setdefault(e, []).append(peer(e, arch, w, onnxs.get(e), batch, threads, mode, side, iters))
        med = {e: {k: statistics.median(x[k] for x in v) for k in ["images_per_second", "latency_ms_p50", "latency_ms_p99", "peak_rss_mb"]} for e, v in rows.items()}
        macs = json.loads(sh([RESNET, "summary", arch, "--input", str(side), "--json"]))["macs"]
        res = {"workload": name, "arch": arch, "batch": batch, "threads": threads, "mode": mode, "input": side, "iters": iters,
               "precision": precision,
               "runs": a.runs, "macs_per_image": macs, "median": med, "all": rows}
        if precision == "int8":
            res["int8_check"] = int8_checks[arch]
        results.append(res)
        line = f"{name}: ours {med['ours']['images_per_second']:.1f} img/s"
        for e in peers + (["base"] if BASE else []):
            line += f", {e} {med[e]['images_per_second']:.1f} ({med['ours']['images_per_second'] / med[e]['images_per_second']:.2f}x)"
        print(line, flush=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "python": platform.python_version()}
    try:
        import onnxruntime
        import torch

        meta.update({"onnxruntime": onnxruntime.__version__, "torch": torch.__version__})
    except ImportError:
        pass
    json.dump({"meta": meta, "results": results}, open(a.json_out, "w"), indent=1)
    print_table(results, meta)
    print_bf16_table(results)
    print_int8_table(results)


def print_table(results, meta):
    if not any(r.get("precision", "f32") == "f32" for r in results):
        return
    print(f"\nMedians of the timed runs; ratios are ours / peer (higher is better for us). torch 'best' is the faster of NCHW and channels-last.")
    print(f"onnxruntime {meta.get('onnxruntime')}, torch {meta.get('torch')}, {meta['cpus']} CPUs\n")
    base = any("base" in r["median"] for r in results)
    print("| workload | ours img/s | ONNX Runtime | PyTorch best | ours / ORT | ours / PyTorch | ours p50 / p99 ms | ORT p50 / p99 ms | peak RSS ours / ORT MB |"
          + (" ours / base |" if base else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if base else ""))
    for r in results:
        if r.get("precision", "f32") != "f32":
            continue
        m = r["median"]
        o = m["ours"]
        ort = m.get("ort")
        tb = max((m[e] for e in ["torch", "torch-cl"] if e in m), key=lambda x: x["images_per_second"])
        cells = [r["workload"], f"{o['images_per_second']:.1f}",
                 f"{ort['images_per_second']:.1f}" if ort else "—", f"{tb['images_per_second']:.1f}",
                 f"{o['images_per_second'] / ort['images_per_second']:.2f}x" if ort else "—",
                 f"{o['images_per_second'] / tb['images_per_second']:.2f}x",
                 f"{o['latency_ms_p50']:.1f} / {o['latency_ms_p99']:.1f}",
                 f"{ort['latency_ms_p50']:.1f} / {ort['latency_ms_p99']:.1f}" if ort else "—",
                 f"{o['peak_rss_mb']:.0f} / {ort['peak_rss_mb']:.0f}" if ort else f"{o['peak_rss_mb']:.0f} / —"]
        if base:
            cells.append(f"{o['images_per_second'] / m['base']['images_per_second']:.3f}")
        print("| " + " | ".join(cells) + " |")


def print_bf16_table(results):
    rows = [r for r in results if r.get("precision", "f32") == "bf16"]
    if not rows:
        return
    print("\nbf16 inference against our own f32, alternating runs (medians):\n")
    base = any("base" in r["median"] for r in rows)
    print("| workload | ours bf16 img/s | ours f32 img/s | bf16 / f32 | ORT f32 img/s | bf16 / ORT | peak RSS bf16 / f32 MB |"
          + (" ours / base |" if base else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if base else ""))
    for r in rows:
        m = r["median"]
        o, f, ort = m["ours"], m["ours-f32"], m.get("ort")
        cells = [r["workload"], f"{o['images_per_second']:.1f}", f"{f['images_per_second']:.1f}",
                 f"{o['images_per_second'] / f['images_per_second']:.2f}x",
                 f"{ort['images_per_second']:.1f}" if ort else "—",
                 f"{o['images_per_second'] / ort['images_per_second']:.2f}x" if ort else "—",
                 f"{o['peak_rss_mb']:.0f} / {f['peak_rss_mb']:.0f}"]
        if base:
            cells.append(f"{o['images_per_second'] / m['base']['images_per_second']:.3f}")
        print("| " + " | ".join(cells) + " |")


def print_int8_table(results):
    rows = [r for r in results if r.get("precision", "f32") == "int8"]
    if not rows:
        return
    print("\nint8 inference (ours: `resnet quantize`; ORT: static QDQ int8), alternating runs (medians):\n")
    base = any("base" in r["median"] for r in rows)
    print("| workload | ours int8 img/s | ORT int8 img/s | ours / ORT int8 | ours f32 img/s | ours int8 / ours f32 | ORT f32 img/s |"
          + (" ours / base |" if base else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if base else ""))
    for r in rows:
        m = r["median"]
        o, q, f, ort = m["ours"], m["ort-int8"], m["ours-f32"], m["ort"]
        cells = [r["workload"], f"{o['images_per_second']:.1f}", f"{q['images_per_second']:.1f}",
                 f"{o['images_per_second'] / q['images_per_second']:.2f}x", f"{f['images_per_second']:.1f}",
                 f"{o['images_per_second'] / f['images_per_second']:.2f}x", f"{ort['images_per_second']:.1f}"]
        if base:
            cells.append(f"{o['images_per_second'] / m['base']['images_per_second']:.3f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
