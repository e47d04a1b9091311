#!/usr/bin/env bash
# GPU run of 2026-12-03 (third): q's rows at positions an integer tensor gives (q_positions, a
# cache_position rewritten): every -m gpu test, then the static-cache decode loop with the
# position as a Python int and as a tensor (graphs compiled, difference to eager, ms per step).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 330 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1203D.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1203D.log"; grep "^FAILED" "$OUT/gpu_tests_all_1203D.log" | head
grep -E "^E  " "$OUT/gpu_tests_all_1203D.log" | head -20
(cd benchmarks && timeout 240 python static_cache_gpu.py --Tk 65536 --Tq 1 --G 4 16) > "$OUT/static_cache_1203D.log" 2>&1
echo "static rc=$?"; grep -A20 "^| G" "$OUT/static_cache_1203D.log"; tail -3 "$OUT/static_cache_1203D.log"
