#!/usr/bin/env bash
# GPU run of 2026-12-01, third session, fifth call (H200): the inverted loop's sub-tile loop
# warp-specialised by the compiler, at G = 8 and 16. (ws_fwd_gpu.py and the fsa_ws option were
# removed after this run; both are in commit c32d0e2.)
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 400 python benchmarks/ws_fwd_gpu.py > "$OUT/ws_fwd_h200.log" 2>&1
tail -12 "$OUT/ws_fwd_h200.log"
