#!/usr/bin/env bash
# GPU run of 2026-12-01 (seventh call, H200), the final code of the day: the row top-k's GPU
# tests at its new launch table; the kernel bench at 64K (the index changed, so the forward's
# figures move); the e2e rows at 32K, 64K and 4096.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 40 python -m pytest -q -m gpu tests/test_kernels_topk.py > "$OUT/gpu_tests_topk_1201g.log" 2>&1
tail -1 "$OUT/gpu_tests_topk_1201g.log"
timeout 180 python -m fsa_compile bench --T 64K --json "$OUT/bench_h200_T65536.json" --plot "$OUT/bench_h200_T65536.png" \
  > "$OUT/bench_h200_T65536.log" 2>&1
tail -14 "$OUT/bench_h200_T65536.log"
timeout 110 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T32768.json" > "$OUT/e2e_h200_T32768.log" 2>&1
tail -3 "$OUT/e2e_h200_T32768.log"
timeout 120 python -m fsa_compile bench --e2e --T 65536 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T65536.json" > "$OUT/e2e_h200_T65536.log" 2>&1
tail -3 "$OUT/e2e_h200_T65536.log"
timeout 140 python -m fsa_compile bench --e2e --T 4096 --layers 2 --backends inductor,fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T4096.json" > "$OUT/e2e_h200_T4096.log" 2>&1
tail -3 "$OUT/e2e_h200_T4096.log"
