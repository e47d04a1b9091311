#!/usr/bin/env bash
# Needs the code of 15599d5: the dq_block_hq/dq_warps/dq_unroll options were removed after this run (NOTES.md).
# GPU run (fourth session of 2026-11-25): G = 8 skewed forward + backward is 0.113 of dense
# against 0.11. Knobs around the new backward default at G = 8 (both selections) and 16: 8 warps
# (offline 210 registers, no spills), 16-row tiles, and the dQ reduction's heads per program and
# warps.
set -uo pipefail
. benchmarks/gpu_env.sh
V="num_warps=8;tile_t=16/G;dq_block_hq=16;dq_warps=8;dq_block_hq=16,dq_warps=8;dq_block_hq=8"
timeout 150 python benchmarks/gpu_check_bwd.py --quick --no-time --check-variants --variants "dq_block_hq=8;dq_warps=8" 2>&1 | grep -v -i warn > "$OUT/g8knobs_checks.log"
grep -E "correctness|FAIL" "$OUT/g8knobs_checks.log"
timeout 300 python benchmarks/gpu_check_bwd.py --no-check --G 8 --variants "$V" --json "$OUT/g8knobs_T65536.json" 2>&1 | grep -v -i warn > "$OUT/g8knobs_T65536.log"
sed -n '/=== summary/,$p' "$OUT/g8knobs_T65536.log" | tail -n +3
timeout 100 python benchmarks/gpu_check_bwd.py --no-check --no-time --profile 8 2>&1 | grep -v -i warn > "$OUT/profile_bwd_G8_stages3.log"
grep -E "kernel" "$OUT/profile_bwd_G8_stages3.log" | awk '{printf "%-40.40s %s %s %s\n", $1, $(NF-3), $(NF-1), $NF}'
