#!/usr/bin/env bash
# GPU run (second session of 2026-11-25): the README's e2e table with the final code, in two
# calls: "short" (4K-16K, inductor/fsa/dense) and "long" (32K, 64K, fsa/dense, then the -m gpu
# tests of the kernels and the row top-k).
set -uo pipefail
. benchmarks/gpu_env.sh
if [ "${1:-short}" = short ]; then
  LOSS_CURVE=0 timeout 580 bash benchmarks/e2e_gpu.sh 4096,8192,16384 2 inductor,fsa,dense 2>&1 | grep -v -i warn | tee "$OUT/e2e_short.log" | tail -12
  cp "$OUT/e2e.json" "$OUT/e2e_short.json"
else
  LOSS_CURVE=0 timeout 330 bash benchmarks/e2e_gpu.sh 32768,65536 2 fsa,dense 2>&1 | grep -v -i warn | tee "$OUT/e2e_long.log" | tail -8
  cp "$OUT/e2e.json" "$OUT/e2e_long.json"
  timeout 250 python -m pytest -q -m gpu tests/test_kernels_forward.py tests/test_kernels_backward.py tests/test_kernels_index.py tests/test_kernels_topk.py 2>&1 | tail -3 | tee "$OUT/gpu_tests.log"
fi
