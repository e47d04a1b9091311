#!/usr/bin/env bash
# GPU run of 2026-12-01 (eighth call, H200): compute-sanitizer over the forward with the index's
# new kernels (padding, duplicates, future blocks, a partial last block, three chunks), then the
# 32K e2e row again with 30 timed steps (the prefill ratio had no margin in the last one).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 150 compute-sanitizer --tool memcheck python benchmarks/sanitize_fwd.py > "$OUT/sanitize_1201h.log" 2>&1
tail -4 "$OUT/sanitize_1201h.log"
timeout 200 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 30 \
  --json "$OUT/e2e_h200_T32768_1201h.json" > "$OUT/e2e_h200_T32768_1201h.log" 2>&1
tail -3 "$OUT/e2e_h200_T32768_1201h.log"
