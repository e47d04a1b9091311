#!/usr/bin/env bash
# GPU run of 2026-12-01 (fifth call, H200): the index in three launches, the shorter canonical
# indices and the prefill's 128-query sliding chunks, against the code before them (_old/, a copy
# of HEAD made for this run only) in the 32K prefill; the row top-k's launch knobs; the GPU tests
# of what changed; the e2e row at 32K.
set -uo pipefail
. benchmarks/gpu_env.sh
PYTHONPATH=$PWD/_old:/tmp/fsa_ep timeout 100 python benchmarks/prefill_knobs_gpu.py --T 32768 --steps 30 \
  --chunks 0 --win 256 > "$OUT/prefill_old_T32768_h200.log" 2>&1
tail -4 "$OUT/prefill_old_T32768_h200.log"
timeout 120 python benchmarks/prefill_knobs_gpu.py --T 32768 --steps 30 --chunks 0 --win 128,256 --kernels \
  > "$OUT/prefill_new_T32768_h200.log" 2>&1
tail -5 "$OUT/prefill_new_T32768_h200.log"
timeout 90 python benchmarks/topk_knobs_gpu.py > "$OUT/topk_knobs_h200.log" 2>&1
tail -3 "$OUT/topk_knobs_h200.log"
timeout 150 python -m pytest -q -m gpu -n 4 tests/test_kernels_index.py tests/test_kernels_forward.py \
  tests/test_kernels_backward.py tests/test_backend_kernels.py tests/test_reference.py > "$OUT/gpu_tests_1201e.log" 2>&1
tail -3 "$OUT/gpu_tests_1201e.log"
timeout 110 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T32768_1201e.json" > "$OUT/e2e_h200_T32768_1201e.log" 2>&1
tail -4 "$OUT/e2e_h200_T32768_1201e.log"
