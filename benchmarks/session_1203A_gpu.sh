#!/usr/bin/env bash
# GPU run of 2026-12-03: every -m gpu test with the ops' twins in Inductor's graphs and the
# one-launch canonical indices, and the launched decode steps with their host-time pieces
# (decode_gpu.py --profile; "fsa, ops not twins" is the same backend without the post-grad pass).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 270 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1203A.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1203A.log"; grep "^FAILED" "$OUT/gpu_tests_all_1203A.log" | head
(cd benchmarks && timeout 270 python decode_gpu.py --Tq 1 16 --G 4 16 --profile) > "$OUT/decode_profile_1203A.log" 2>&1
echo "decode rc=$?"; grep -E "^    [a-zA-Z]" "$OUT/decode_profile_1203A.log"; grep -A14 "^| G" "$OUT/decode_profile_1203A.log"
