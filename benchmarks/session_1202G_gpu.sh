#!/usr/bin/env bash
# GPU run of 2026-12-02 (second session, H200): every -m gpu test (the new mask_compare_any form
# among them), the CPU suite on that machine (the conftest's skip of interpreted-kernel tests where
# CUDA is, never run there yet), and the pattern pass alone after its per-node evaluation steps.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 200 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202G.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202G.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202G.log" | head
skip=$(python -c "import hypothesis" 2>/dev/null || echo "--ignore=tests/test_properties.py")
timeout 240 python -m pytest -q -n 12 $skip > "$OUT/cpu_tests_on_gpu_host_1202G.log" 2>&1
echo "cpu rc=$?"; tail -1 "$OUT/cpu_tests_on_gpu_host_1202G.log"; grep "^FAILED" "$OUT/cpu_tests_on_gpu_host_1202G.log" | head
timeout 100 python benchmarks/pass_time.py --T 4096 --layers 2 --prefill > "$OUT/pass_time_1202G.log" 2>&1
echo "pass rc=$?"; cat "$OUT/pass_time_1202G.log" | tail -3
