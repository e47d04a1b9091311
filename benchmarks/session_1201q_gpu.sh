#!/usr/bin/env bash
# (fsa_local and the scripts this calls were removed after these runs; they are in commit 885f039)
# GPU run of 2026-12-01, fourth session, first call (H200): the local blocks in the merge
# (fsa_local) against the partials-only merge at T = 64K, every G, both distributions; then the
# forward and index tests at real sizes, the new variant included.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 420 python benchmarks/local_merge_gpu.py > "$OUT/local_merge_h200.log" 2>&1
echo "rc=$?"
timeout 150 python -m pytest -q -m gpu -n 4 tests/test_kernels_forward.py tests/test_kernels_index.py > "$OUT/gpu_tests_local_1201q.log" 2>&1
tail -3 "$OUT/gpu_tests_local_1201q.log"
grep -A200 "^=== " "$OUT/local_merge_h200.log"
grep MISMATCH "$OUT/local_merge_h200.log" | head; grep "reference checks" "$OUT/local_merge_h200.log"
