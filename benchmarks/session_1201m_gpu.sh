#!/usr/bin/env bash
# GPU run of 2026-12-01, third session, third call (H200): the backward's and the forward's launch
# knobs at G = 16 against their defaults (chosen on the H100).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 330 python benchmarks/gpu_check_bwd.py --no-check --G 16 --dists uniform,skewed \
  --variants "ch=512;ch=128;tile_t=4;num_stages=2;maxnreg=232" > "$OUT/bwd_knobs_G16_h200.log" 2>&1
tail -14 "$OUT/bwd_knobs_G16_h200.log"
timeout 200 python benchmarks/gpu_check.py --skip-check --G 16 --dist uniform,skewed \
  --variants fsa,fsa32t8,fsa32t8@fsa_maxnreg=96 > "$OUT/fwd_knobs32_G16_h200.log" 2>&1
tail -4 "$OUT/fwd_knobs32_G16_h200.log"
