#!/usr/bin/env bash
# GPU run of 2026-12-01, ninth session (H200), last call: every -m gpu test on the final code
# (one memo for the process), and the e2e 32K row with the pattern pass timed in both compiles.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201L.log" 2>&1
tail -1 "$OUT/gpu_tests_all_1201L.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201L.log" | head
timeout 200 python benchmarks/pass_in_e2e.py $PWD --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T32768_1201L.json" > "$OUT/e2e_h200_T32768_1201L.log" 2>&1
echo "e2e rc=$?"; grep -E "pattern pass|T= 32768" "$OUT/e2e_h200_T32768_1201L.log" | cut -c1-250; tail -4 "$OUT/e2e_h200_T32768_1201L.log"
