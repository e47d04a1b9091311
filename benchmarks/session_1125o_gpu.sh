#!/usr/bin/env bash
# Needs the code of d8b8b1e: the split option was removed after this run (NOTES.md).
# GPU run (fourth session of 2026-11-25): the backward's inverted kernel split into a dK/dV launch
# and a dQ launch (the dQ one without the float32 accumulators: ~145 registers instead of 255),
# and the next tile's entries loaded ahead. Checked (quick sizes, each variant's config) and timed.
set -uo pipefail
. benchmarks/gpu_env.sh
V="ent_next=1;split=1;split=1,dq_maxnreg=128;split=1,dq_stages=2;split=1,dq_st=1;split=1,ent_next=1,dq_maxnreg=128"
CV="ent_next=1;split=1,dq_maxnreg=128;split=1,dq_st=1,dq_stages=2"
timeout 240 python benchmarks/gpu_check_bwd.py --quick --no-time --check-variants --variants "$CV" 2>&1 | grep -v -i warn > "$OUT/split_checks.log"
grep -E "correctness|FAIL" "$OUT/split_checks.log"
timeout 330 python benchmarks/gpu_check_bwd.py --no-check --G 1,4,8,16 --dists uniform --variants "$V" --json "$OUT/split_timing.json" 2>&1 | grep -v -i warn > "$OUT/split_timing.log"
sed -n '/=== summary/,$p' "$OUT/split_timing.log" | tail -30
