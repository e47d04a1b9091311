#!/usr/bin/env bash
# GPU run of 2026-12-02 (H200), second call: the training example after its loop stopped waiting
# for the GPU every step; bf16 weights against mixed precision (--amp) under fsa, T = 4096 and 16384.
set -uo pipefail
. benchmarks/gpu_env.sh
. benchmarks/train_run.sh
for T in 4096 16384; do
  train_run 1202B fsa_bf16_T$T --backend fsa --T $T --steps 40
  train_run 1202B fsa_amp_T$T --backend fsa --amp --T $T --steps 40
  python benchmarks/compare_losses.py "$OUT/train_fsa_bf16_T${T}_1202B.json" "$OUT/train_fsa_amp_T${T}_1202B.json"
done
