#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): the fsa training step at T = 4096 after the
# sliding branch copies its key windows when training: both modes, with the CUDA-graph report.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 230 python benchmarks/cudagraphs_gpu.py --T 4096 --models fsa --why > "$OUT/cudagraphs_fixed_1201H.log" 2>&1
echo "rc=$?"; grep -E "^\[why\]" "$OUT/cudagraphs_fixed_1201H.log" | cut -c1-200; tail -3 "$OUT/cudagraphs_fixed_1201H.log"
