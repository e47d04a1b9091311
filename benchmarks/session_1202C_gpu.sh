#!/usr/bin/env bash
# GPU run of 2026-12-02 (H200), third call: where train.py's ~25 ms step at T = 4096 goes.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 400 python benchmarks/train_loop_gpu.py --T 4096 --steps 30 --rows 30 > "$OUT/train_loop_1202C.log" 2>&1
echo "rc=$?"; grep -v "^USDT\|Warning\|warn" "$OUT/train_loop_1202C.log" | cut -c1-200 | tail -50
