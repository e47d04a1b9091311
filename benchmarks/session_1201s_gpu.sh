#!/usr/bin/env bash
# (fsa_local and the scripts this calls were removed after these runs; they are in commit 885f039)
# GPU run of 2026-12-01, fourth session, third call (H200): the local kernel's launch knobs.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 500 python benchmarks/local_knobs_gpu.py > "$OUT/local_knobs_h200.log" 2>&1
echo "rc=$?"
grep -A100 "^=== " "$OUT/local_knobs_h200.log"; grep "MISMATCH\|Error" "$OUT/local_knobs_h200.log" | head
