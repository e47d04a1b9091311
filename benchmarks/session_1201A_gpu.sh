#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): host time of a short op call after the autograd
# context change, with the per-launch host times of the Triton kernels.
set -uo pipefail
. benchmarks/gpu_env.sh
for cfg in "8192 1 128" "8192 4 128" "4096 4 64"; do
  set -- $cfg
  timeout 150 python benchmarks/op_host_cost.py --T $1 --G $2 --D $3 --kernels --launches --rows 40 \
    > "$OUT/op_host_cost_T$1_G$2_D$3_1201A.log" 2>&1
  echo "T=$1 G=$2 D=$3 rc=$?"; sed -n 2,12p "$OUT/op_host_cost_T$1_G$2_D$3_1201A.log"
  grep -A14 "Triton launches per" "$OUT/op_host_cost_T$1_G$2_D$3_1201A.log"
done
