#!/usr/bin/env python3
"""Training memory and speed side by side: `resnet bench --mode train` (without
and with recomputation by segments) against PyTorch's training step (forward,
cross-entropy, backward, SGD with momentum) on the same network, batch and
threads; runs alternate, and each figure is the median of its runs.

    bench/train_memory.sh [--runs 2] [--only resnet1202] [--threads 2]

Peak memory is each process's peak resident set (VmHWM; ru_maxrss for Python),
so it includes each runtime's own code and libraries. Prints a Markdown table
and writes bench/train_memory.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESNET = os.path.join(ROOT, "target", "release", "resnet")
PEER = os.path.join(ROOT, "bench", "peer.py")

# (arch, batch, input, timed iterations, segments for the recomputing run)
CASES = [
    ("resnet110", 128, 32, 5, "10"),
    ("resnet50", 16, 224, 3, "4"),
    ("resnet1202", 128, 32, 2, "24"),
]


def ours(arch, batch, side, iters, threads, segments):
    cmd = [RESNET, "bench", "--arch", arch, "--batch", str(batch), "--input", str(side), "--mode", "train",
           "--iters", str(iters), "--warmup", "1", "--threads", str(threads), "--json"]
    if segments:
        cmd += ["--checkpoint-segments", segments]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def torch(arch, batch, side, iters, threads):
    cmd = [sys.executable, PEER, "--engine", "torch", "--arch", arch, "--batch", str(batch), "--input", str(side),
           "--mode", "train", "--iters", str(iters), "--warmup", "1", "--threads", str(threads)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--only", help="comma-separated architectures")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    only = set(a.only.split(",")) if a.only else None
    rows = []
    for arch, batch, side, iters, segments in CASES:
        if only and arch not in only:
            continue
        runs = {"ours": [], "recompute": [], "torch": []}
        for r in range(a.runs):
            print(f"{arch} batch {batch}: run {r + 1}/{a.runs}", file=sys.stderr)
            runs["ours"].append(ours(arch, batch, side, iters, a.threads, None))
            runs["torch"].append(torch(arch, batch, side, iters, a.threads))
            runs["recompute"].append(ours(arch, batch, side, iters, a.threads, segments))
        med = {k: {f: statistics.median(x[f] for x in v) for f in ("images_per_second", "peak_rss_mb")}
               for k, v in runs.items()}
        for k in ("ours", "recompute"):
            med[k]["planned_peak_mb"] = statistics.median(x["planned_peak_mb"] for x in runs[k])
            med[k]["measured_peak_mb"] = statistics.median(x["measured_peak_mb"] for x in runs[k])
        rows.append({"arch": arch, "batch": batch, "input": side, "threads": a.threads, "segments": int(segments),
                     "median": med, "runs": runs})
    print("| network, batch | PyTorch: img/s, peak RSS | ours: img/s, peak RSS (x PyTorch), planned | "
          "ours, K segments recomputed: img/s, peak RSS (x PyTorch), planned |")
    print("|---|---|---|---|")
    for r in rows:
        m = r["median"]
        t, o, c = m["torch"], m["ours"], m["recompute"]
        print(f"| {r['arch']}, {r['batch']} ({r['input']}x{r['input']}) "
              f"| {t['images_per_second']:.1f}, {t['peak_rss_mb']:.0f} MB "
              f"| {o['images_per_second']:.1f}, {o['peak_rss_mb']:.0f} MB "
              f"({o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x), {o['planned_peak_mb']:.0f} MB "
              f"| K={r['segments']}: {c['images_per_second']:.1f}, {c['peak_rss_mb']:.0f} MB "
              f"({c['peak_rss_mb'] / t['peak_rss_mb']:.2f}x), {c['planned_peak_mb']:.0f} MB |")
    with open(os.path.join(ROOT, "bench", "train_memory.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
