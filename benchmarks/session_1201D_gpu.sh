#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): the example model's step in default mode and
# mode="reduce-overhead", fsa and dense, T = 4096 and 16384.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 560 python benchmarks/cudagraphs_gpu.py --T 4096,16384 > "$OUT/cudagraphs_h200_1201D.log" 2>&1
echo "rc=$?"; tail -12 "$OUT/cudagraphs_h200_1201D.log"
