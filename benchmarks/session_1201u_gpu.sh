#!/usr/bin/env bash
# GPU run of 2026-12-01, fifth session, fourth call (H200): with the shared-block tiles as the
# G = 16 default, every -m gpu test, then the kernel bench at 64K (README table).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201u.log" 2>&1
tail -3 "$OUT/gpu_tests_all_1201u.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201u.log" | head
timeout 240 python -m fsa_compile bench --T 64K --json "$OUT/bench_h200_T65536_1201u.json" \
  --plot "$OUT/bench_h200_T65536_1201u.png" > "$OUT/bench_h200_T65536_1201u.log" 2>&1
echo "bench rc=$?"; tail -16 "$OUT/bench_h200_T65536_1201u.log"
