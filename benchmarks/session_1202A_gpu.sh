#!/usr/bin/env bash
# GPU run of 2026-12-02 (H200): every -m gpu test (with the new autocast cases); the example model
# under mixed precision (float32 weights, autocast to bf16): eager against fsa at T = 2048, 2 layers
# (eager's gathers need memory), loss curves compared; and fsa with bf16 weights against fsa --amp
# at T = 4096, 4 layers (the default model), tok/s after the first step.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 260 python -m pytest -q -m gpu -n 4 > "$OUT/gpu_tests_all_1202A.log" 2>&1
tail -1 "$OUT/gpu_tests_all_1202A.log"; grep "^FAILED" "$OUT/gpu_tests_all_1202A.log" | head
. benchmarks/train_run.sh
train_run 1202A eager_amp_T2048 --backend eager --amp --T 2048 --layers 2 --steps 30
train_run 1202A fsa_amp_T2048 --backend fsa --amp --T 2048 --layers 2 --steps 30
train_run 1202A fsa_bf16_T4096 --backend fsa --T 4096 --steps 40
train_run 1202A fsa_amp_T4096 --backend fsa --amp --T 4096 --steps 40
python benchmarks/compare_losses.py "$OUT/train_eager_amp_T2048_1202A.json" "$OUT/train_fsa_amp_T2048_1202A.json"
python benchmarks/compare_losses.py "$OUT/train_fsa_bf16_T4096_1202A.json" "$OUT/train_fsa_amp_T4096_1202A.json"
