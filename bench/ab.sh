#!/usr/bin/env bash
# A/B timing of two builds of `resnet`: runs `bench ARGS --json` with each binary
# in turn, N times, and prints each one's runs, their medians and the ratio.
# Alternating is what makes the ratio usable on a machine whose speed drifts.
#
#   cp target/release/resnet /tmp/base   # before the change
#   cargo build --release                # after it
#   bench/ab.sh /tmp/base target/release/resnet 5 --arch resnet20 --batch 128 --mode train --iters 15
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bench/ab.sh BASE_BINARY NEW_BINARY RUNS [bench arguments...]" >&2
  exit 2
fi
base=$1 new=$2 runs=$3
shift 3
for _ in $(seq "$runs"); do
  for which in base new; do
    bin=$base
    [ "$which" = new ] && bin=$new
    echo "$which $("$bin" bench "$@" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["images_per_second"])')"
  done
done | python3 -c '
import statistics, sys
runs = {"base": [], "new": []}
for line in sys.stdin:
    which, value = line.split()
    runs[which].append(float(value))
for which, values in runs.items():
    print(f"{which}: {[round(v, 1) for v in values]} median {statistics.median(values):.1f} images/s")
ratio = statistics.median(runs["new"]) / statistics.median(runs["base"])
print(f"new / base: {ratio:.3f}")
'
