#!/usr/bin/env bash
# GPU run of 2026-12-01 (fourth call, H200): what the 32K prefill gains from the inverted loop's
# chunk of query tokens (does a partial buffer small enough for L2 pay for its extra launches?)
# and from 128-query sliding-window chunks; kernel level at the e2e model's shapes first.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 150 python benchmarks/gpu_check.py --skip-check --T 32768 --G 4 --D 64 --dist uniform,skewed \
  --variants fsa,fsa@chunk=32768,fsa@chunk=4096,fsa@chunk=1024,fsa@chunk=512 > "$OUT/chunk_D64_T32768_h200.log" 2>&1
tail -8 "$OUT/chunk_D64_T32768_h200.log"
timeout 330 python benchmarks/prefill_knobs_gpu.py --T 32768 --steps 30 --chunks 0,32768,1024 --win 256,128 \
  > "$OUT/prefill_knobs_T32768_h200.log" 2>&1
tail -12 "$OUT/prefill_knobs_T32768_h200.log"
