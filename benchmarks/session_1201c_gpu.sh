#!/usr/bin/env bash
# GPU run of 2026-12-01 (third call, H200): the e2e table's short end (4096: default Inductor,
# fsa, dense) and long end (65536: fsa, dense), each under its own time limit.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 150 python -m fsa_compile bench --e2e --T 4096 --layers 2 --backends inductor,fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T4096.json" 2>&1 | grep -v -i warn > "$OUT/e2e_h200_T4096.log"
tail -5 "$OUT/e2e_h200_T4096.log"
timeout 140 python -m fsa_compile bench --e2e --T 65536 --layers 2 --backends fsa,dense --steps 10 \
  --json "$OUT/e2e_h200_T65536.json" 2>&1 | grep -v -i warn > "$OUT/e2e_h200_T65536.log"
tail -5 "$OUT/e2e_h200_T65536.log"
