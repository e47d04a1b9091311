#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): host time against device time of one op call at
# short T (the bench's shapes, D = 128).
set -uo pipefail
. benchmarks/gpu_env.sh
for cfg in "8192 1" "8192 4" "32768 1"; do
  set -- $cfg
  timeout 150 python benchmarks/op_host_cost.py --T $1 --G $2 --D 128 --kernels --rows 25 \
    > "$OUT/op_host_cost_T$1_G$2_1201z.log" 2>&1
  echo "T=$1 G=$2 rc=$?"; sed -n 2,12p "$OUT/op_host_cost_T$1_G$2_1201z.log"
  grep -A3 "GPU kernels per call" "$OUT/op_host_cost_T$1_G$2_1201z.log"
done
