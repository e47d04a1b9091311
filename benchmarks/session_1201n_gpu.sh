#!/usr/bin/env bash
# GPU run of 2026-12-01, third session, last call (H200): every -m gpu test on the final tree.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 500 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201n.log" 2>&1
tail -3 "$OUT/gpu_tests_all_1201n.log"
