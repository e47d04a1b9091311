#!/usr/bin/env bash
# GPU run (fourth session of 2026-11-25): at G = 8 and 16 the backward's 64-row tiles spill
# (offline ptxas: 88 bytes; 32-row tiles none, with or without ent_next or 2 stages). 32-row
# tiles with ent_next and/or 2 stages, checked at quick sizes and timed at T=64K.
set -uo pipefail
. benchmarks/gpu_env.sh
V="tile_t=32/G;tile_t=32/G,ent_next=1;tile_t=32/G,num_stages=2;tile_t=32/G,ent_next=1,num_stages=2"
timeout 240 python benchmarks/gpu_check_bwd.py --quick --no-time --check-variants --variants "tile_t=32/G,ent_next=1,num_stages=2" 2>&1 | grep -v -i warn > "$OUT/rows32_checks.log"
grep -E "correctness|FAIL" "$OUT/rows32_checks.log"
timeout 300 python benchmarks/gpu_check_bwd.py --no-check --G 8,16 --variants "$V" --json "$OUT/rows32_T65536.json" 2>&1 | grep -v -i warn > "$OUT/rows32_T65536.log"
sed -n '/=== summary/,$p' "$OUT/rows32_T65536.log" | tail -n +3
