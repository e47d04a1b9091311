#!/usr/bin/env bash
# GPU run: the e2e table again (after the rewrite stopped handing the op mixed dtypes), and a
# profile of one fsa training step and one prefill of the example model at T=32K.
# Usage on the device machine: bash benchmarks/e2e_profile_gpu.sh "<T list>" [layers]
set -uo pipefail
. benchmarks/gpu_env.sh
TS=${1:-4096,8192,16384,32768}
LAYERS=${2:-2}
timeout 330 python -m fsa_compile bench --e2e --T "$TS" --layers "$LAYERS" --backends inductor,fsa,dense --steps 3 \
  --json "$OUT/e2e.json" --plot "$OUT/e2e.png" 2>&1 | grep -v -i warn | tail -12
timeout 150 python benchmarks/profile_step.py --T 32768 --prefill 2>&1 | grep -v -i warn | tail -45
