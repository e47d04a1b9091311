#!/usr/bin/env bash
# Needs the code of 0714fe7: the fsa_mask_skip plan option was removed after this run (results in NOTES.md).
# GPU run (third session of 2026-11-25): the main kernel's mask only where a sub-tile needs it
# (ALU is its busiest pipe), checked and timed against the new default at D=128 and D=64.
set -uo pipefail
. benchmarks/gpu_env.sh
V=fsa,fsa@fsa_mask_skip=1,fsa-maskskip-check
timeout 200 python benchmarks/gpu_check.py --quick --T 65536 --G 1,4,8 --dist uniform,skewed --variants fsa,fsa@fsa_mask_skip=1 2>&1 | grep -v -i warn > "$OUT/maskskip_T65536.log"
grep -E "FAIL|variants with|part 1|^ *[0-9]+ +(uniform|skewed)|^ +G|===" "$OUT/maskskip_T65536.log" | tail -12
timeout 100 python benchmarks/gpu_check.py --skip-check --T 32768 --D 64 --G 2,4 --dist uniform --variants fsa,fsa@fsa_mask_skip=1 2>&1 | grep -v -i warn > "$OUT/maskskip_D64_T32768.log"
grep -E "^ *[0-9]+ +uniform|^ +G|===" "$OUT/maskskip_D64_T32768.log" | tail -4
