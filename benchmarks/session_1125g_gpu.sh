#!/usr/bin/env bash
# GPU run (second session of 2026-11-25): the index with 16-bit chunk-free sort keys: per-kernel
# split, the bench at G=1 and 8, then the -m gpu kernel tests.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 90 python benchmarks/profile_fwd.py --G 1,8 --variants fsa 2>&1 | grep -v -i warn | tee "$OUT/profile_fwd_int16.log" | tail -20
timeout 110 python -m fsa_compile bench --T 64K --G 1,8 --dist uniform,skewed --strategies auto 2>&1 | grep -v -i warn | tee "$OUT/bench_int16.log" | tail -6
timeout 390 python -m pytest -q -m gpu tests/test_kernels_index.py tests/test_kernels_forward.py tests/test_kernels_backward.py 2>&1 | tail -2 | tee "$OUT/gpu_tests_int16.log"
