#!/usr/bin/env bash
# GPU run of 2026-12-03 (second session, last): every -m gpu test on the final tree (after
# 1203B: the shared ancestor walk, the near miss naming the offsets it tried, one more property).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1203C.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1203C.log"; grep "^FAILED" "$OUT/gpu_tests_all_1203C.log" | head
