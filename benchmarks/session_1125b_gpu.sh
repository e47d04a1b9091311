#!/usr/bin/env bash
# GPU run of the second session of 2026-11-25: the merge overlapped with the next chunk's main
# programs (checks, then T=64K D=128 at every G and the e2e model's shape T=32K D=64 G=4), and a
# kernel profile of the example model's 32K prefill.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python benchmarks/overlap_gpu.py --T 65536 --G 1,2,4,8,16 2>&1 | grep -v -i warn | tee "$OUT/overlap_T65536.log" | tail -60
timeout 100 python benchmarks/overlap_gpu.py --skip-check --T 32768 --G 2,4 --D 64 2>&1 | grep -v -i warn | tee "$OUT/overlap_D64_T32768.log" | tail -12
timeout 150 python benchmarks/profile_step.py --T 32768 --prefill --rows 40 2>&1 | grep -v -i warn | tee "$OUT/profile_T32768.log" | tail -48
