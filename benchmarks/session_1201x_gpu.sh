#!/usr/bin/env bash
# GPU run of 2026-12-01, fifth session, after the review's block_tile refactor (H200): every
# -m gpu test. (It prints nothing after the count when none failed, so its rc is 1 then.)
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201x.log" 2>&1
tail -1 "$OUT/gpu_tests_all_1201x.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201x.log" | head
