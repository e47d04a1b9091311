#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): what Inductor's CUDA-graph wrapping step sees for
# each graph of the fsa training step at T = 4096 with mode="reduce-overhead".
set -uo pipefail
. benchmarks/gpu_env.sh
TORCH_LOGS="perf_hints" timeout 250 python benchmarks/cudagraphs_gpu.py --T 4096 --models fsa \
  --modes reduce-overhead --steps 3 --why > "$OUT/cudagraphs_why_1201G.log" 2>&1
echo "rc=$?"; grep -E "^\[why\]|skipping|perf_hint" "$OUT/cudagraphs_why_1201G.log" | cut -c1-400 | head -20
tail -2 "$OUT/cudagraphs_why_1201G.log"
