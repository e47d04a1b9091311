#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): Inductor's cudagraph log for the fsa training step
# at T = 4096 with mode="reduce-overhead" (why its backward runs without replay).
set -uo pipefail
. benchmarks/gpu_env.sh
TORCH_LOGS="cudagraphs,cudagraph_static_inputs" timeout 250 python benchmarks/cudagraphs_gpu.py --T 4096 \
  --models fsa --modes reduce-overhead --steps 4 > "$OUT/cudagraphs_log_1201F.log" 2>&1
echo "rc=$?"; grep -v "^\s*$" "$OUT/cudagraphs_log_1201F.log" | grep -i -E "skip|record|warm|reason|disab|cudagraph|fallback" | cut -c1-300 | sort | uniq -c | sort -rn | head -30
