#!/usr/bin/env bash
# GPU run (fourth session of 2026-11-25): the next tile's entries loaded ahead, now the backward's
# default at G <= 4. Checks at quick sizes (the default configs), the backward's GPU tests, and
# ent_next on/off at T=64K (D=128, G=1/2/4, both selections) and at the e2e model's shape
# (T=32K, D=64, G=4).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 200 python benchmarks/gpu_check_bwd.py --quick --no-time 2>&1 | grep -v -i warn > "$OUT/entnext_checks.log"
grep -E "correctness|FAIL" "$OUT/entnext_checks.log"
timeout 150 python -m pytest -q -m gpu tests/test_kernels_backward.py 2>&1 | tail -3 | tee "$OUT/gpu_tests_bwd_entnext.log"
timeout 150 python benchmarks/gpu_check_bwd.py --no-check --G 1,2,4 --variants "ent_next=0" --json "$OUT/entnext_T65536.json" 2>&1 | grep -v -i warn > "$OUT/entnext_T65536.log"
timeout 60 python benchmarks/gpu_check_bwd.py --no-check --T 32768 --D 64 --G 4 --dists uniform --variants "ent_next=0" --json "$OUT/entnext_D64.json" 2>&1 | grep -v -i warn > "$OUT/entnext_D64.log"
for f in entnext_T65536 entnext_D64; do sed -n '/=== summary/,$p' "$OUT/$f.log" | tail -n +3; done
