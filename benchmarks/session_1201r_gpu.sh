#!/usr/bin/env bash
# (fsa_local and the scripts this calls were removed after these runs; they are in commit 885f039)
# GPU run of 2026-12-01, fourth session, second call (H200): the local blocks again, as an
# unrolled merge and as one extra partial ("slot"), with a per-kernel profile at G = 8 and 16; then
# the forward tests at real sizes, both new variants included.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 400 python benchmarks/local_merge_gpu.py > "$OUT/local_merge_h200_v2.log" 2>&1
echo "rc=$?"
timeout 170 python -m pytest -q -m gpu -n 4 tests/test_kernels_forward.py > "$OUT/gpu_tests_local_1201r.log" 2>&1
tail -3 "$OUT/gpu_tests_local_1201r.log"
grep "^profile" "$OUT/local_merge_h200_v2.log"
grep -A200 "^=== " "$OUT/local_merge_h200_v2.log"
grep MISMATCH "$OUT/local_merge_h200_v2.log" | head; grep "reference checks\|Error" "$OUT/local_merge_h200_v2.log" | head
