#!/usr/bin/env bash
# GPU run of 2026-12-02 (H200), last call: after the point evaluator began reading arithmetic on
# plain data as data (RoPE's rotate_half, QK-norm), the form and autocast modules on that machine's
# torch 2.11: their CPU tests (the new ones among them) and their -m gpu cases (the kernels).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 240 python -m pytest -q -n 4 -m "gpu or not gpu" tests/test_patterns_forms.py tests/test_autocast.py \
  > "$OUT/forms_autocast_1202F.log" 2>&1
echo "rc=$?"; tail -1 "$OUT/forms_autocast_1202F.log"; grep "^FAILED" "$OUT/forms_autocast_1202F.log" | head
