#!/usr/bin/env bash
# GPU run of 2026-12-01, eighth session (H200), first call: every -m gpu test on the seventh
# session's code (the soundness fixes, never run on a GPU), then reduce-overhead at 16384 from
# next_h200_gpu.sh. The e2e rows follow in the second call (session_1201J_gpu.sh).
set -uo pipefail
. benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 300 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201I.log" 2>&1
tail -1 "$OUT/gpu_tests_all_1201I.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201I.log" | head
timeout 220 python benchmarks/cudagraphs_gpu.py --T 16384 --why > "$OUT/cudagraphs_T16384_1201I.log" 2>&1
echo "cudagraphs rc=$?"; grep -E "^\[why\]" "$OUT/cudagraphs_T16384_1201I.log" | cut -c1-200
tail -8 "$OUT/cudagraphs_T16384_1201I.log"
