#!/usr/bin/env bash
# GPU run (second session of 2026-11-25): after the rotary tables, the 50-step loss curves (eager
# and fsa both measured again: the model's numerics changed) and the e2e rows at 32K and 64K.
set -uo pipefail
. benchmarks/gpu_env.sh
FRESH_EAGER=1 timeout 560 bash benchmarks/e2e_gpu.sh 32768,65536 2 fsa,dense 2>&1 | grep -v -i warn | tee "$OUT/e2e_rope.log" | tail -30
