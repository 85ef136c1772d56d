#!/usr/bin/env bash
# Runs one fuzz target with libFuzzer (cargo-fuzz, nightly) for SECONDS:
#   tools/fuzz.sh TARGET SECONDS
# Targets: pth pickle safetensors load_weights idx cifar image card.
# New inputs go to fuzz/corpus/TARGET (seeded from fuzz/seeds, made by
# tools/fuzz_seeds.py, and from fuzz/corpora/TARGET.bin.gz, the committed
# minimised corpus: see tools/fuzz_corpus.py); crashes to fuzz/artifacts/TARGET. Limits: 10 s per input (a hang), no
# single allocation over 100 MB, 2 GB resident (AddressSanitizer included).
# The final statistics (executions, coverage) go to fuzz/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
target=$1 seconds=$2
mkdir -p "corpus/$target" "seeds/$target" logs
[ -f "corpora/$target.bin.gz" ] && python3 ../tools/fuzz_corpus.py unpack "$target"
cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
  -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=100 -rss_limit_mb=2048 \
  -print_final_stats=1 2>&1 | tee "logs/$target.log" | grep -E "^#[0-9]+ *(DONE|INITED)|ERROR|SUMMARY|stat::" || true
