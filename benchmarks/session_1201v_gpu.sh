#!/usr/bin/env bash
# GPU run of 2026-12-01, fifth session, fifth call (H200): compute-sanitizer over the forward
# with the shared-block tiles (issue 4, item 7).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 400 compute-sanitizer --tool memcheck python benchmarks/sanitize_fwd.py > "$OUT/sanitize_1201v.log" 2>&1
echo "rc=$?"; tail -12 "$OUT/sanitize_1201v.log"
