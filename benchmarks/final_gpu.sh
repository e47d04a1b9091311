#!/usr/bin/env bash
# Last device call of a session: fsa training at T=64K, the -m gpu tests, and a profile of one
# fsa training step of the example model at T=32K (where the e2e step spends its time).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 110 python -m fsa_compile bench --e2e --T 65536 --backends fsa --layers 2 --steps 2 --json "$OUT/e2e_64k.json" 2>&1 | grep -v -i warn | tail -4
timeout 120 python -m pytest -m gpu -q -x -p no:cacheprovider tests/test_kernels_forward.py tests/test_kernels_backward.py 2>&1 | tail -4
timeout 90 python benchmarks/profile_step.py --T 32768 --rows 14 2>&1 | grep -v -i warn | tail -22
