#!/usr/bin/env bash
# GPU run of 2026-12-02 (fourth session), second call: every -m gpu test after the plan's one-row
# rule and the baddbmm case's fix, the op with q shorter than k again, and a decode step written
# in plain PyTorch: eager, Inductor, backend="fsa" (benchmarks/decode_gpu.py).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202L.log" 2>&1
echo "gpu rc=$?"; tail -1 "$OUT/gpu_tests_all_1202L.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202L.log" | head
timeout 120 python benchmarks/offset_gpu.py --Tk 65536 --Tq 1 16 --G 4 16 > "$OUT/offset_1202L.log" 2>&1
echo "offset rc=$?"; tail -14 "$OUT/offset_1202L.log"
timeout 200 python benchmarks/decode_gpu.py --Tk 65536 --Tq 1 16 --G 4 16 > "$OUT/decode_1202L.log" 2>&1
echo "decode rc=$?"; tail -20 "$OUT/decode_1202L.log"
