#!/usr/bin/env bash
# `resnet embed` throughput on a folder of real JPEG photos against `resnet
# bench` (the network alone, on tensors) in the same run, alternating:
#
#   bench/embed.sh [ARCH] [RUNS] [PRECISION]     # defaults: resnet50 3 f32
#   EMBED_ARGS="--workers 1" bench/embed.sh       # extra embed flags
#
# The photos (512 JPEGs of about 500x375) come from tools/make_photo_folder.py
# (needs the bench venv, bench/.venv, or Pillow and scikit-image). Both sides
# run batch 16 on all cores; embed decodes as it does by default (see
# `resnet embed --help`, --workers).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-resnet50} runs=${2:-3} precision=${3:-f32}
bin=target/release/resnet
py=python3
[ -x bench/.venv/bin/python ] && py=bench/.venv/bin/python
work=${EMBED_BENCH_DIR:-/tmp/resnet-embed-bench}
[ -d "$work/photos" ] || "$py" tools/make_photo_folder.py "$work" 512 >/dev/null
"$bin" init --arch "$arch" --out "$work/$arch.safetensors" >/dev/null
n=$(ls "$work/photos" | wc -l)
for _ in $(seq "$runs"); do
  bench=$("$bin" bench --arch "$arch" --batch 16 --iters 16 --precision "$precision" \
    --weights "$work/$arch.safetensors" --json | "$py" -c 'import json, sys; print(json.load(sys.stdin)["images_per_second"])')
  embed=$("$bin" embed --data "folder:$work" --weights "$work/$arch.safetensors" --batch 16 ${EMBED_ARGS:-} \
    --precision "$precision" --out "$work/features.safetensors" --quiet 2>&1 | sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p')
  echo "$bench $embed"
done | "$py" -c '
import statistics, sys
rows = [tuple(map(float, line.split())) for line in sys.stdin]
bench, embed = [r[0] for r in rows], [r[1] for r in rows]
print(f"bench (network on tensors): {[round(v, 1) for v in bench]} median {statistics.median(bench):.1f} images/s")
print(f"embed ('"$n"' JPEGs, decoded): {[round(v, 1) for v in embed]} median {statistics.median(embed):.1f} images/s")
print(f"embed / bench: {statistics.median(embed) / statistics.median(bench):.3f}")
'
