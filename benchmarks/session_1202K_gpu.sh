#!/usr/bin/env bash
# GPU run of 2026-12-02 (fourth session): every -m gpu test (the kernels now take q shorter than
# k), the default kernels at T = 64K (G = 4, 16) against the 2026-12-01 figures, and the op with
# q shorter than k (benchmarks/offset_gpu.py).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202K.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202K.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202K.log" | head
timeout 150 python -m fsa_compile bench --T 64K --G 4,16 --dist uniform --json "$OUT/bench_1202K.json" > "$OUT/bench_1202K.log" 2>&1
echo "bench rc=$?"; tail -12 "$OUT/bench_1202K.log"
timeout 150 python benchmarks/offset_gpu.py --Tk 65536 --Tq 1 16 4096 --G 4 16 > "$OUT/offset_1202K.log" 2>&1
echo "offset rc=$?"; tail -22 "$OUT/offset_1202K.log"
