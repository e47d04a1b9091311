#!/usr/bin/env bash
# GPU run of 2026-12-03 (second): every -m gpu test with q's rows at other fixed offsets and a
# static cache's symbolic position passed to the op, then a static-cache decode loop (graphs
# compiled over 24 positions, difference to eager, ms per step) for eager, Inductor and fsa.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1203B.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1203B.log"; grep "^FAILED" "$OUT/gpu_tests_all_1203B.log" | head
(cd benchmarks && timeout 240 python static_cache_gpu.py --Tk 65536 --Tq 1 --G 4 16) > "$OUT/static_cache_1203B.log" 2>&1
echo "static rc=$?"; grep -A12 "^| G" "$OUT/static_cache_1203B.log"; tail -3 "$OUT/static_cache_1203B.log"
