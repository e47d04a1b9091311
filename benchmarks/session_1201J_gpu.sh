#!/usr/bin/env bash
# GPU run of 2026-12-01, eighth session (H200), second call: the e2e training rows at 32K and 64K
# (next_h200_gpu.sh's first half), not measured since the sliding branch copies its key windows.
set -uo pipefail
. benchmarks/gpu_env.sh
for T in 32768 65536; do
  timeout 150 python -m fsa_compile bench --e2e --T $T --layers 2 --backends fsa,dense --steps 10 \
    --json "$OUT/e2e_h200_T${T}_1201J.json" > "$OUT/e2e_h200_T${T}_1201J.log" 2>&1
  echo "e2e T=$T rc=$?"; tail -4 "$OUT/e2e_h200_T${T}_1201J.log"
done
