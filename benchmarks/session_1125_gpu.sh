#!/usr/bin/env bash
# GPU run of 2026-11-25 (second half): the sliding branch's band spelling, the index built
# without atomics (forward times and the index piece), the 32K e2e row, and the GPU kernel tests.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 150 python benchmarks/branches_gpu.py --T 32768 --only win_q,win_band,win_band128,win_band512 2>&1 | grep -v -i warn | tail -6
timeout 120 python benchmarks/gpu_check.py --skip-check --T 65536 --G 1,8 --dist uniform --variants fsa 2>&1 | grep -v -i warn | grep "pieces\|^ *[0-9]* *uniform"
timeout 60 python benchmarks/gpu_check.py --skip-check --T 32768 --G 4 --D 64 --dist uniform --variants fsa 2>&1 | grep -v -i warn | grep "pieces\|^ *[0-9]* *uniform"
timeout 200 python -m fsa_compile bench --e2e --T 32768 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_32k.json" 2>&1 | grep -v -i warn | tail -5
timeout 400 python -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_forward.py tests/test_kernels_backward.py tests/test_kernels_index.py 2>&1 | tail -2
