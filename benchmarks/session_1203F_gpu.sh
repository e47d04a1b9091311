#!/usr/bin/env bash
# GPU run of 2026-12-03 (fourth, second call): every -m gpu test after the pattern pass's review
# fixes (the output's strides, rounding, rows at the code's numbers, the evaluator's arithmetic).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 420 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1203F.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1203F.log"; grep "^FAILED" "$OUT/gpu_tests_all_1203F.log" | head
grep -E "^E  " "$OUT/gpu_tests_all_1203F.log" | head -20
true
