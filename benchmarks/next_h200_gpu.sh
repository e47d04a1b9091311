#!/usr/bin/env bash
# For the next session lent `nvidia-h200` (written 2026-12-01, seventh session, with no machine
# lent; not yet run): the figures the README marks as not measured since the example model's
# sliding branch began copying its key windows when training: the e2e training rows at 32K and
# 64K, and reduce-overhead at 16384. About 400 s.
set -uo pipefail
. benchmarks/gpu_env.sh
for T in 32768 65536; do
  timeout 130 python -m fsa_compile bench --e2e --T $T --layers 2 --backends fsa,dense --steps 10 \
    --json "$OUT/e2e_h200_T${T}_next.json" > "$OUT/e2e_h200_T${T}_next.log" 2>&1
  echo "e2e T=$T rc=$?"; tail -3 "$OUT/e2e_h200_T${T}_next.log"
done
timeout 200 python benchmarks/cudagraphs_gpu.py --T 16384 --why > "$OUT/cudagraphs_T16384_next.log" 2>&1
echo "cudagraphs rc=$?"; grep -E "^\[why\]" "$OUT/cudagraphs_T16384_next.log" | cut -c1-200
tail -6 "$OUT/cudagraphs_T16384_next.log"
