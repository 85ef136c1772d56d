#!/usr/bin/env bash
# `resnet serve` under load, on 127.0.0.1 only: throughput, p50/p99 latency,
# errors by status and the server's peak memory at concurrency 1, 8, 32 and
# 128 (closed loop: each client sends its next request when the last is
# answered), then a flood at concurrency 128 against a small queue (--queue 8),
# which must shed load with 503s in flat memory. `resnet bench` on tensors at
# batch 16 and batch 1 is measured in the same run for comparison.
#
#   bench/serve_load.sh [ARCH] [PRECISION]       # defaults: resnet50 f32
#
# The request is a real JPEG photo (500x375, from tools/make_photo_folder.py)
# posted to /v1/classify. Needs target/release/resnet; builds the load
# generator (crates/resnet-cli/examples/loadgen.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-resnet50} precision=${2:-f32}
bin=target/release/resnet
cargo build --release -q -p resnet-cli --example loadgen
load=target/release/examples/loadgen
py=python3
[ -x bench/.venv/bin/python ] && py=bench/.venv/bin/python
work=${SERVE_BENCH_DIR:-/tmp/resnet-serve-bench}
mkdir -p "$work"
[ -f "$work/photos/00000.jpg" ] || "$py" tools/make_photo_folder.py "$work" 4 >/dev/null
photo="$work/photos/00000.jpg"
"$bin" init --arch "$arch" --out "$work/$arch.safetensors" >/dev/null

for b in 16 1; do
  "$bin" bench --arch "$arch" --batch "$b" --iters $((b == 1 ? 40 : 12)) --precision "$precision" --json \
    | "$py" -c 'import json, sys; r = json.load(sys.stdin); print("bench batch %d: %.1f images/s, latency p50 %.1f ms, p99 %.1f ms" % (r["batch"], r["images_per_second"], r["latency_ms_p50"], r["latency_ms_p99"]))'
done

port=18080
serve() {
  "$bin" serve --weights "$work/$arch.safetensors" --precision "$precision" --addr "127.0.0.1:$port" \
    --max-batch 16 --max-delay-ms 5 "$@" 2>"$work/serve.log" &
  pid=$!
  until curl -sf "127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; do sleep 0.2; done
}
peak_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }

serve --queue 256
for c in 1 8 32 128; do
  n=$((c == 1 ? 200 : c * 8))
  echo "concurrency $c: $("$load" "127.0.0.1:$port" /v1/classify "$photo" "$c" "$n" 60) server peak $(peak_mb) MB"
done
kill -TERM "$pid"; wait "$pid" && echo "graceful stop: exit 0"

serve --queue 8
before=$(rss_mb)
echo "flood, --queue 8, concurrency 128: $("$load" "127.0.0.1:$port" /v1/classify "$photo" 128 3000 20) server RSS before ${before} MB, peak $(peak_mb) MB, after $(rss_mb) MB"
kill -TERM "$pid"; wait "$pid" && echo "graceful stop: exit 0"
