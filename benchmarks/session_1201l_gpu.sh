#!/usr/bin/env bash
# GPU run of 2026-12-01, third session, second call (H200): G = 16 with each query's slots split
# between the NSA order and the inverted loop (one after the other, and on two streams), and the
# backward's per-kernel profile at G = 16.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python benchmarks/g16_split_gpu.py > "$OUT/g16_split_h200.log" 2>&1
tail -10 "$OUT/g16_split_h200.log"
timeout 200 python benchmarks/gpu_check_bwd.py --no-check --no-time --profile 16 --G 16 \
  > "$OUT/profile_bwd_G16_h200.log" 2>&1
grep -v "^$" "$OUT/profile_bwd_G16_h200.log" | tail -20
