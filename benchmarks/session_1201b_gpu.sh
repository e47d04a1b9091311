#!/usr/bin/env bash
# GPU run of 2026-12-01 (second call, H200): every -m gpu test on the final code (4 pytest
# workers sharing the GPU, so the Triton compiles run in parallel), then kernel profiles of
# the 32K prefill of the example model, NSA and dense.
# (The run of 2026-12-01 also piped the pytest output through `grep -v -i warn`, which dropped
# pytest's summary line, "N passed, .. warnings"; the pytest logs are no longer filtered.)
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 380 python -m pytest -q -m gpu -n 4 -p no:cacheprovider tests 2>&1 | tr '\r' '\n' > "$OUT/gpu_tests_all_1201.log"
grep -E "passed|failed|error|FAIL" "$OUT/gpu_tests_all_1201.log" | tail -8
for a in nsa dense; do
  timeout 70 python benchmarks/profile_step.py --T 32768 --prefill --no-train --attention $a --rows 30 2>&1 \
    | grep -v -i warn > "$OUT/profile_prefill_${a}_T32768_h200.log"
  grep -E "Self CUDA time total" "$OUT/profile_prefill_${a}_T32768_h200.log"
done
