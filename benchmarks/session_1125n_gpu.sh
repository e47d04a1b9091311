#!/usr/bin/env bash
# GPU run (third session of 2026-11-25): is the G=1 outlier of the bench (auto 2.05 ms, fsa 1.50
# with the same plan) reproducible? Three bench passes at G=1 in separate processes, then the
# backward's per-kernel split at G=8.
set -uo pipefail
. benchmarks/gpu_env.sh
for i in 1 2 3; do
  timeout 80 python -m fsa_compile bench --T 64K --G 1 --strategies fsa,nsa,auto 2>&1 | grep -v -i warn | grep -E "^ +(fsa|nsa|auto|dense)" | tee -a "$OUT/bench_G1_repeat.log" | sed 's/\[.*//'
  echo "--" | tee -a "$OUT/bench_G1_repeat.log"
done
timeout 150 python benchmarks/gpu_check_bwd.py --no-check --no-time --profile 8 2>&1 | grep -v -i warn | tee "$OUT/profile_bwd_G8.log" | grep -E "kernel|Self" | awk '{printf "%-50.50s %s %s %s\n", $1, $(NF-3), $(NF-1), $NF}'
