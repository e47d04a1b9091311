#!/usr/bin/env bash
# GPU run of 2026-12-02 (H200), second call: the training example after its loop stopped waiting
# for the GPU every step; bf16 weights against mixed precision (--amp) under fsa, T = 4096 and 16384.
set -uo pipefail
. benchmarks/gpu_env.sh
train() {  # tag, then train.py's flags
  local tag=$1; shift
  timeout 150 python examples/train.py "$@" --log-json "$OUT/train_${tag}_1202B.json" > "$OUT/train_${tag}_1202B.log" 2>&1
  echo "$tag rc=$?: $(grep -m1 parameters "$OUT/train_${tag}_1202B.log" | cut -c1-150)"
  tr '\r' '\n' < "$OUT/train_${tag}_1202B.log" | grep "^step" | tail -1
  grep -o "dtype=[a-z0-9]*; plan: [a-z]*" "$OUT/train_${tag}_1202B.log" | sort | uniq -c
}
for T in 4096 16384; do
  train fsa_bf16_T$T --backend fsa --T $T --steps 40
  train fsa_amp_T$T --backend fsa --amp --T $T --steps 40
  python benchmarks/compare_losses.py "$OUT/train_fsa_bf16_T${T}_1202B.json" "$OUT/train_fsa_amp_T${T}_1202B.json"
done
