#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): why the fsa training step at T = 4096 with
# mode="reduce-overhead" takes 9.7 ms: profile, and the autograd context A/B.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 250 python benchmarks/cudagraphs_gpu.py --T 4096 --models fsa --modes reduce-overhead --profile \
  > "$OUT/cudagraphs_profile_1201E.log" 2>&1
echo "rc=$?"; tail -3 "$OUT/cudagraphs_profile_1201E.log"
timeout 200 python benchmarks/cudagraphs_gpu.py --T 4096 --models fsa --modes reduce-overhead --old-autograd \
  > "$OUT/cudagraphs_old_autograd_1201E.log" 2>&1
echo "rc=$?"; tail -3 "$OUT/cudagraphs_old_autograd_1201E.log"
