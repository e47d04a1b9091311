#!/usr/bin/env bash
# GPU runs of 2026-12-02 (H200), fourth and fifth calls: train.py with CUDA graphs (--mode
# reduce-overhead) at T = 4096, bf16 weights and --amp. Call 1202D ran it as `CALL=1202D`, call
# 1202E (the default) again after the progress rate became the last stretch's.
set -uo pipefail
. benchmarks/gpu_env.sh
. benchmarks/train_run.sh
CALL=${CALL:-1202E}
TAIL=4 train_run $CALL fsa_bf16_ro_T4096 --backend fsa --mode reduce-overhead --T 4096 --steps 40
TAIL=4 train_run $CALL fsa_amp_ro_T4096 --backend fsa --mode reduce-overhead --amp --T 4096 --steps 40
