#!/usr/bin/env bash
# GPU run after a change of the example model's branch spelling: the branch micro-benchmark for
# the named variants, the 32K e2e row (fsa and dense, one process) and a profile of one fsa
# training step and prefill at 32K.
# Usage on the device machine: bash benchmarks/branches_e2e_gpu.sh "<variants>" [T list]
set -uo pipefail
. benchmarks/gpu_env.sh
VARIANTS=${1:-cmp_cur,cmp_tri,cmp_group,win_q}
TS=${2:-32768}
timeout 200 python benchmarks/branches_gpu.py --T 32768 --only "$VARIANTS" 2>&1 | grep -v -i warn | tail -12
timeout 200 python -m fsa_compile bench --e2e --T "$TS" --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e.json" 2>&1 | grep -v -i warn | tail -6
timeout 150 python benchmarks/profile_step.py --T 32768 --prefill 2>&1 | grep -v -i warn | tail -45
