#!/usr/bin/env bash
# GPU run of 2026-12-01 (tenth call, H200; the session's last device minutes): the forward's and
# the backend's GPU tests on the final code (after the prefetch option's removal).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 100 python -m pytest -q -m gpu -n 4 tests/test_kernels_forward.py tests/test_backend_kernels.py \
  > "$OUT/gpu_tests_fwd_final_1201j.log" 2>&1
tail -2 "$OUT/gpu_tests_fwd_final_1201j.log"
