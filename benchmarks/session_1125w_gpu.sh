#!/usr/bin/env bash
# GPU run (fourth session of 2026-11-25), final code: ARG bench = the kernel table at T=64K for the
# README; ARG tests = every -m gpu test.
set -uo pipefail
. benchmarks/gpu_env.sh
if [ "${1:-bench}" = bench ]; then
  timeout 330 python -m fsa_compile bench --T 64K --json "$OUT/bench_h100_T65536.json" --plot "$OUT/bench_h100_T65536.png" \
    2>&1 | grep -v -i warn > "$OUT/bench_h100_T65536.log"
  grep -E "^ +65536 +[0-9]+ +(uniform|skewed) +auto" "$OUT/bench_h100_T65536.log"
else
  timeout 585 python -m pytest -q -m gpu tests 2>&1 | tr '\r' '\n' > "$OUT/gpu_tests_all_1125d.log"
  grep -E "passed|failed|error" "$OUT/gpu_tests_all_1125d.log" | tail -5
fi
