#!/usr/bin/env bash
# GPU run (fourth session of 2026-11-25): the backward's new default (32-row tiles, next entries
# ahead, 2 stages at every G for D <= 128): quick checks, the backward's GPU tests, and around
# it 3 stages and half / twice the rows per program, T=64K, G=1..16.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 200 python benchmarks/gpu_check_bwd.py --quick --no-time 2>&1 | grep -v -i warn > "$OUT/rows32_default_checks.log"
grep -E "correctness|FAIL" "$OUT/rows32_default_checks.log"
timeout 150 python -m pytest -q -m gpu tests/test_kernels_backward.py 2>&1 | tail -3 | tee "$OUT/gpu_tests_bwd_rows32.log"
V="num_stages=3;ch=2048/G;ch=8192/G"
timeout 330 python benchmarks/gpu_check_bwd.py --no-check --G 1,2,4,8,16 --dists uniform --variants "$V" --json "$OUT/rows32_knobs_T65536.json" 2>&1 | grep -v -i warn > "$OUT/rows32_knobs_T65536.log"
sed -n '/=== summary/,$p' "$OUT/rows32_knobs_T65536.log" | tail -n +3
