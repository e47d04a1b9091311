#!/usr/bin/env bash
# GPU run of 2026-12-01, third session, first call (H200): what bounds the G = 16 forward.
# The loads of each loop order timed alone (g16_floor_gpu.py), the per-kernel profile of both
# strategies at G = 16, and a few launch knobs of both against their defaults.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 200 python benchmarks/g16_floor_gpu.py > "$OUT/g16_floor_h200.log" 2>&1
tail -12 "$OUT/g16_floor_h200.log"
timeout 120 python benchmarks/profile_fwd.py --G 16 --variants fsa,nsa1 > "$OUT/profile_fwd_G16_h200.log" 2>&1
cat "$OUT/profile_fwd_G16_h200.log"
timeout 240 python benchmarks/gpu_check.py --skip-check --G 16 --dist uniform \
  --variants fsa,nsa1,fsa@fsa_stages=2,fsa128t4,fsa128t4@fsa_maxnreg=0,fsa@fsa_tpp=16,nsa1@nsa_stages=4 \
  > "$OUT/knobs_G16_h200.log" 2>&1
tail -6 "$OUT/knobs_G16_h200.log"
