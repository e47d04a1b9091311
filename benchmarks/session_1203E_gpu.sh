#!/usr/bin/env bash
# GPU run of 2026-12-03 (fourth): the kernels read q_positions as given (int32/int64, any strides)
# and clamp in-kernel, so the op no longer clamps, casts and copies the tensor. "tests": every
# -m gpu test; "static": the static-cache decode loop with a tensor position, launched and under
# CUDA graphs, and a profile of 50 launched steps (kernels, launches, copies and their stacks).
set -uo pipefail
. benchmarks/gpu_env.sh
case "${1:-tests}" in
tests)
  timeout 420 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1203E.log" 2>&1
  echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1203E.log"; grep "^FAILED" "$OUT/gpu_tests_all_1203E.log" | head
  grep -E "^E  " "$OUT/gpu_tests_all_1203E.log" | head -20 ;;
static)
  (cd benchmarks && timeout 540 python static_cache_gpu.py --Tk 65536 --Tq 1 --G 4 16 --profile) > "$OUT/static_cache_1203E.log" 2>&1
  echo "static rc=$?"; grep -A30 "^| G" "$OUT/static_cache_1203E.log"; tail -3 "$OUT/static_cache_1203E.log" ;;
esac
