#!/usr/bin/env bash
# GPU run of 2026-12-01, fifth session, calls t and u (H200): NSA-order shared-block tiles,
# checked against the reference at real sizes, then timed at T = 64K, G = 16.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 560 python benchmarks/nsa_shared_gpu.py > "$OUT/nsa_shared_h200.log" 2>&1
echo "rc=$?"
grep -c "^PASS" "$OUT/nsa_shared_h200.log"; grep "^FAIL\|EXCEPTION\|part 1" "$OUT/nsa_shared_h200.log" | head -20
grep -A10 "^=== " "$OUT/nsa_shared_h200.log"
