#!/usr/bin/env bash
# GPU run (second session of 2026-11-25): kernel profiles of one 32K prefill of the NSA model and of
# the dense model, and the source of the rotary kernel they share (PROFILE_NAME_WIDTH: full names).
set -uo pipefail
. benchmarks/gpu_env.sh
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind_cache PROFILE_NAME_WIDTH=160
timeout 150 python benchmarks/profile_step.py --T 32768 --no-train --rows 24 2>&1 | grep -v -i warn | tee "$OUT/profile_prefill_nsa.log" | grep -E "^(==|triton|cudnn|nvjet|fsa|merge|row|void|Self)" | cut -c1-175
timeout 120 python benchmarks/profile_step.py --T 32768 --no-train --rows 16 --attention dense 2>&1 | grep -v -i warn | tee "$OUT/profile_prefill_dense.log" | grep -E "^(==|triton|cudnn|nvjet|fsa|merge|row|void|Self)" | cut -c1-175
for f in $(grep -rl --include='*.py' "bitwise_and_cat" /tmp/ind_cache | head -4); do echo "=== $f"; grep -n -B2 -A70 "^def triton_poi_fused.*bitwise_and_cat" $f | head -90; done > "$OUT/kernels.txt"
wc -l "$OUT/kernels.txt"
