#!/usr/bin/env bash
# GPU run (fourth session of 2026-11-25): the kernel table at T=64K for the README with the
# backward's ent_next default (G <= 4); then (ARG e2e) the e2e table at 32K/64K.
set -uo pipefail
. benchmarks/gpu_env.sh
if [ "${1:-bench}" = bench ]; then
  timeout 570 python -m fsa_compile bench --T 64K --json "$OUT/bench_h100_T65536.json" --plot "$OUT/bench_h100_T65536.png" \
    2>&1 | grep -v -i warn | tee "$OUT/bench_h100_T65536.log" | tail -30
else
  LOSS_CURVE=0 OUT=$OUT timeout 570 bash benchmarks/e2e_gpu.sh 32768,65536 2 fsa,dense 2>&1 | tail -12
fi
