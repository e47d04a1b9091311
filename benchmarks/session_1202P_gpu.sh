#!/usr/bin/env bash
# GPU run of 2026-12-02 (fifth session): every -m gpu test with the remembered plans, and where a
# launched decode step's host time goes (decode_gpu.py --profile).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202P.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202P.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202P.log" | head
(cd benchmarks && timeout 240 python decode_gpu.py --Tq 1 16 --G 4 16 --profile) > "$OUT/decode_profile_1202P.log" 2>&1
echo "decode rc=$?"; grep -A12 "^| G" "$OUT/decode_profile_1202P.log"
