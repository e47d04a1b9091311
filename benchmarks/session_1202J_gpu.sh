#!/usr/bin/env bash
# GPU run of 2026-12-02 (third session): every -m gpu test (the two new forms among them), then
# the g-major GQA regrouping against the op's own order (benchmarks/regroup_gpu.py).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 230 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202J.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202J.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202J.log" | head
timeout 330 python benchmarks/regroup_gpu.py --T 16384 65536 --G 4 16 > "$OUT/regroup_1202J.log" 2>&1
echo "regroup rc=$?"; tail -8 "$OUT/regroup_1202J.log"
