#!/usr/bin/env bash
# GPU run (second session of 2026-11-25): the kernel table at T=64K for the README, after the
# index without atomics.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 570 python -m fsa_compile bench --T 64K --json "$OUT/bench_h100_T65536.json" --plot "$OUT/bench_h100_T65536.png" \
  2>&1 | grep -v -i warn | tee "$OUT/bench_h100_T65536.log" | tail -30
