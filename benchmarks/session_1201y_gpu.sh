#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): the kernel bench with its defaults (T = 8K, 16K,
# 32K, 64K; G = 1..16; both selections; each strategy, auto and dense), one process.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 570 python -m fsa_compile bench --json "$OUT/bench_h200_all_T_1201y.json" \
  --plot "$OUT/bench_h200_all_T_1201y.png" > "$OUT/bench_h200_all_T_1201y.log" 2>&1
echo "bench rc=$?"; grep -c "auto  fwd " "$OUT/bench_h200_all_T_1201y.log"
