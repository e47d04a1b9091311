#!/usr/bin/env bash
# GPU run of 2026-12-02 (second session), call 3, the final code: every -m gpu test, and the
# example tests (CPU suite) on the CUDA host after train.py's --device and the demo's float32 check.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 220 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202I.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202I.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202I.log" | head
timeout 200 python -m pytest -q -rf -n 6 tests/test_examples.py > "$OUT/examples_on_gpu_host_1202I.log" 2>&1
echo "examples rc=$?"; tail -1 "$OUT/examples_on_gpu_host_1202I.log"; grep "^FAILED" "$OUT/examples_on_gpu_host_1202I.log" | cut -c1-200 | head
grep -h "against float32\|compiled vs eager" "$OUT/examples_on_gpu_host_1202I.log" | head -4
