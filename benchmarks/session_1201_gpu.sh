#!/usr/bin/env bash
# GPU run of 2026-12-01 (one call, H200): the backward's -m gpu tests on the final code, the e2e
# table at 32K (fsa vs dense), then the kernel table at T=64K, each under its own time limit.
# (The run of 2026-12-01 also piped the pytest output through `grep -v -i warn`, which drops
# pytest's summary line whenever it reports warnings; the pytest log is no longer filtered.)
set -uo pipefail
. benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
timeout 90 python -m pytest -q -m gpu tests/test_kernels_backward.py 2>&1 | tr '\r' '\n' > "$OUT/gpu_tests_bwd_1201.log"
tail -2 "$OUT/gpu_tests_bwd_1201.log"
timeout 150 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T32768.json" 2>&1 | grep -v -i warn > "$OUT/e2e_h200_T32768.log"
tail -6 "$OUT/e2e_h200_T32768.log"
timeout 300 python -m fsa_compile bench --T 64K --json "$OUT/bench_h200_T65536.json" --plot "$OUT/bench_h200_T65536.png" \
  2>&1 | grep -v -i warn > "$OUT/bench_h200_T65536.log"
tail -32 "$OUT/bench_h200_T65536.log"
