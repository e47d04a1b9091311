#!/usr/bin/env bash
# GPU run of 2026-12-01, fifth session, last call (H200): every -m gpu test on the final code
# (after the NSA templates' shared step and store moved to common.py), and the G = 16 timing.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201w.log" 2>&1
tail -2 "$OUT/gpu_tests_all_1201w.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201w.log" | head
timeout 200 python benchmarks/nsa_shared_gpu.py --skip-check > "$OUT/nsa_shared_h200_v4.log" 2>&1
echo "rc=$?"; grep -A4 "^=== " "$OUT/nsa_shared_h200_v4.log"
