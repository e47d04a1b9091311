#!/usr/bin/env bash
# GPU run of 2026-12-02 (fourth session), fourth call: every -m gpu test after the backward's
# padded rows (G not a power of two), and forward + backward at T = 64K (G = 4, 16) against
# call 1202K's figures.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202N.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202N.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202N.log" | head
timeout 200 python -m fsa_compile bench --T 64K --G 3,4,16 --dist uniform --strategies auto --json "$OUT/bench_1202N.json" > "$OUT/bench_1202N.log" 2>&1
echo "bench rc=$?"; tail -6 "$OUT/bench_1202N.log"
