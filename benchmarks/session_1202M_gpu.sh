#!/usr/bin/env bash
# GPU run of 2026-12-02 (fourth session), third call: every -m gpu test with the query-chunk form
# in the decode GPU cases, and the decode step with Inductor under reduce-overhead as well.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202M.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202M.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202M.log" | head
timeout 240 python benchmarks/decode_gpu.py --Tk 65536 --Tq 1 16 --G 4 16 > "$OUT/decode_1202M.log" 2>&1
echo "decode rc=$?"; tail -24 "$OUT/decode_1202M.log"
