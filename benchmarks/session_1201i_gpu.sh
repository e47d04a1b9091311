#!/usr/bin/env bash
# GPU run of 2026-12-01 (ninth call, H200), after the forward's prefetch option was removed (it
# no longer compiled with triton 3.6): every plan variant compiled for the GPU against the
# reference, then compute-sanitizer over the forward (three chunks of the index too).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 90 python -m pytest -q -m gpu tests/test_kernels_forward.py -k every_variant > "$OUT/gpu_tests_variants_1201i.log" 2>&1
tail -2 "$OUT/gpu_tests_variants_1201i.log"
timeout 110 compute-sanitizer --tool memcheck python benchmarks/sanitize_fwd.py > "$OUT/sanitize_1201i.log" 2>&1
grep -v -i "warn" "$OUT/sanitize_1201i.log" | tail -7
