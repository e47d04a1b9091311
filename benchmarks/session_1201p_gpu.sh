#!/usr/bin/env bash
# GPU run of 2026-12-01, third session, last call (H200): after the review commits (the row
# top-k's table written as a table, the index's bins kernel given chunk_entries), every -m gpu test.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 500 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201p.log" 2>&1
tail -3 "$OUT/gpu_tests_all_1201p.log"
