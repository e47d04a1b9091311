#!/usr/bin/env bash
# GPU run of 2026-12-02 (H200), fifth call: 1202D again (train.py --mode reduce-overhead at T = 4096,
# bf16 weights and --amp) with the progress rate over the stretch since the last line.
set -uo pipefail
. benchmarks/gpu_env.sh
for run in "bf16:" "amp:--amp"; do
  tag=${run%%:*}; flags=${run#*:}
  timeout 200 python examples/train.py --backend fsa --mode reduce-overhead $flags --T 4096 --steps 40 \
    --log-json "$OUT/train_fsa_${tag}_ro_T4096_1202E.json" > "$OUT/train_fsa_${tag}_ro_T4096_1202E.log" 2>&1
  echo "$tag rc=$?: $(grep -m1 parameters "$OUT/train_fsa_${tag}_ro_T4096_1202E.log" | cut -c1-160)"
  tr '\r' '\n' < "$OUT/train_fsa_${tag}_ro_T4096_1202E.log" | grep "^step" | tail -4
  grep -i "skipping cudagraphs\|error" "$OUT/train_fsa_${tag}_ro_T4096_1202E.log" | head -3
done
