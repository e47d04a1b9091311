#!/usr/bin/env bash
# GPU run of 2026-12-01, ninth session (H200): every -m gpu test on the pattern pass that
# verifies identical layers once, the pass alone at 2, 4 and 8 layers (CPU work, on this host's
# CPU), and the e2e 32K training row, whose compile time the earlier pass had raised to 47 s.
set -uo pipefail
. benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 240 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1201K.log" 2>&1
tail -1 "$OUT/gpu_tests_all_1201K.log"; grep "^FAILED" "$OUT/gpu_tests_all_1201K.log" | head
for L in 2 4 8; do
  timeout 60 python benchmarks/pass_time.py --T 4096 --layers $L 2>&1 | tail -1 | tee -a "$OUT/pass_time_1201K.log"
done
timeout 150 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T32768_1201K.json" > "$OUT/e2e_h200_T32768_1201K.log" 2>&1
echo "e2e rc=$?"; tail -5 "$OUT/e2e_h200_T32768_1201K.log"
