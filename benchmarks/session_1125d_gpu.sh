#!/usr/bin/env bash
# GPU run (second session of 2026-11-25): the row top-k with group maxima (check, timing, the -m gpu
# tests), then the e2e rows at 32K (fsa and dense) with it.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 120 python benchmarks/topk_gpu.py 2>&1 | grep -v -i warn | tee "$OUT/topk_gpu.log" | tail -12
timeout 120 python -m pytest -q -m gpu tests/test_kernels_topk.py 2>&1 | tail -2 | tee "$OUT/gpu_tests_topk.log"
timeout 300 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_T32768_topk2.json" 2>&1 | grep -v -i warn | tail -8
