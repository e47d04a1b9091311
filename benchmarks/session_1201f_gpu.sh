#!/usr/bin/env bash
# GPU run of 2026-12-01 (sixth call, H200): the bins search over more programs, in the 32K
# prefill; the row top-k's launch knobs at 256 and 1024 columns; the forward's tile and merge
# knobs at the e2e model's shapes; every GPU test.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 80 python benchmarks/prefill_knobs_gpu.py --T 32768 --steps 30 --chunks 0 --win 128 \
  > "$OUT/prefill_bins128_T32768_h200.log" 2>&1
tail -3 "$OUT/prefill_bins128_T32768_h200.log"
timeout 80 python benchmarks/topk_knobs_gpu.py --L 256,1024 --rows 4,8,16,32 --warps 2,4 --groups 8,16,32 \
  > "$OUT/topk_knobs_256_1024_h200.log" 2>&1
tail -3 "$OUT/topk_knobs_256_1024_h200.log"
timeout 100 python benchmarks/gpu_check.py --skip-check --T 32768 --G 4 --D 64 --dist uniform,skewed \
  --variants fsa,fsa@fsa_tpp=4,fsa@fsa_tpp=16,fsa@merge_rows=8,fsa@merge_rows=32,fsa@merge_warps=8,fsa@merge_warps=2,fsa@fsa_warps=8,fsa@fsa_stages=2 \
  > "$OUT/knobs_D64_T32768_h200.log" 2>&1
tail -5 "$OUT/knobs_D64_T32768_h200.log"
timeout 200 python -m pytest -q -m gpu -n 4 tests > "$OUT/gpu_tests_all_1201f.log" 2>&1
tail -3 "$OUT/gpu_tests_all_1201f.log"
