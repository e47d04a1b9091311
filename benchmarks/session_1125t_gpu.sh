#!/usr/bin/env bash
# GPU run (fourth session of 2026-11-25): the backward with 3 stages at G >= 4: quick checks, the
# backward's GPU tests, 2 vs 3 stages at the e2e model's shape (T=32K, D=64, G=4), and the kernel
# table at T=64K for the README.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 200 python benchmarks/gpu_check_bwd.py --quick --no-time 2>&1 | grep -v -i warn > "$OUT/stages3_checks.log"
grep -E "correctness|FAIL" "$OUT/stages3_checks.log"
timeout 150 python -m pytest -q -m gpu tests/test_kernels_backward.py 2>&1 | tail -3 | tee "$OUT/gpu_tests_bwd_stages3.log"
timeout 60 python benchmarks/gpu_check_bwd.py --no-check --T 32768 --D 64 --G 4 --dists uniform --variants "num_stages=2" --json "$OUT/stages3_D64.json" 2>&1 | grep -v -i warn > "$OUT/stages3_D64.log"
sed -n '/=== summary/,$p' "$OUT/stages3_D64.log" | tail -n +3
timeout 330 python -m fsa_compile bench --T 64K --json "$OUT/bench_h100_T65536.json" --plot "$OUT/bench_h100_T65536.png" \
  2>&1 | grep -v -i warn > "$OUT/bench_h100_T65536.log"
grep -E "^ +65536 +[0-9]+ +(uniform|skewed) +auto" "$OUT/bench_h100_T65536.log"
