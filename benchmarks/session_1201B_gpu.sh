#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): every -m gpu test on the final code, then the
# autograd context's host-time A/B in one process.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201B.log" 2>&1
tail -1 "$OUT/gpu_tests_all_1201B.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201B.log" | head
timeout 200 python benchmarks/host_autograd_ab.py > "$OUT/host_autograd_ab_1201B.log" 2>&1
echo "ab rc=$?"; cat "$OUT/host_autograd_ab_1201B.log"
