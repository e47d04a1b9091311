#!/usr/bin/env bash
# Needs the code of 7c7c509: dq_split (BwdConfig) and ncu_fwd.py --bwd-dq-split were removed after this run (results in NOTES.md).
# GPU run (third session of 2026-11-25): the backward's dQ product in two column halves
# (registers, spills, time at G=1/4/8/16), and the forward's new default (cap + 8 sub-tiles) checked.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 90 python benchmarks/ncu_fwd.py --G 8 --D 128 --T 65536 --backward --bwd-dq-split 2 --resources 2>&1 | grep -v -i warn | grep -A1 "inverted\|^fsa\|^bwd" | tee "$OUT/resources_bwd_split_G8.log"
timeout 120 python benchmarks/gpu_check.py --quick --T 65536 --G 8 --dist uniform --variants fsa 2>&1 | grep -v -i warn > "$OUT/fwd_default_check.log"
grep -E "FAIL|part 1|^ *[0-9]+ +uniform" "$OUT/fwd_default_check.log"
timeout 330 python benchmarks/gpu_check_bwd.py --no-check --T 65536 --G 1,4,8,16 --dists uniform \
  --variants "dq_split=2;dq_split=2,num_stages=2;dq_split=2,tile_t=16/G" 2>&1 | grep -v -i warn > "$OUT/bwd_split.log"
grep -E "^time|correctness|FAIL" "$OUT/bwd_split.log" | sed 's/, dense bwd.*ratio/ ratio/; s/extra \([0-9.]*\) GiB.*/extra \1/'
