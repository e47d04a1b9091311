#!/usr/bin/env bash
# Needs the code of 15599d5: the dq_block_hq/dq_warps/dq_unroll options were removed after this run (NOTES.md).
# GPU run (fourth session of 2026-11-25): the dQ reduction (3.17 ms of the 15.6 ms backward at
# G = 8, ~2.7 TB/s) with its loop over the n slots unrolled, so that every slot's load is in
# flight at once. Checked at quick sizes and timed at T=64K.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 150 python benchmarks/gpu_check_bwd.py --quick --no-time --check-variants --variants "dq_unroll=1" 2>&1 | grep -v -i warn > "$OUT/dqunroll_checks.log"
grep -E "correctness|FAIL" "$OUT/dqunroll_checks.log"
timeout 300 python benchmarks/gpu_check_bwd.py --no-check --G 1,8,16 --variants "dq_unroll=1;dq_unroll=1,dq_warps=8;dq_unroll=1,dq_block_hq=16" --json "$OUT/dqunroll_T65536.json" 2>&1 | grep -v -i warn > "$OUT/dqunroll_T65536.log"
sed -n '/=== summary/,$p' "$OUT/dqunroll_T65536.log" | tail -n +3
