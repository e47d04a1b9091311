#!/usr/bin/env bash
# GPU run (third session of 2026-11-25): the register cap at the other G and sub-tile counts;
# ncu of the capped main kernel, of the backward's inverted kernel and of the NSA order at G=16.
set -uo pipefail
. benchmarks/gpu_env.sh
V=fsa,fsa@fsa_maxnreg=128,fsa@fsa_maxnreg=128+fsa_tpp=8,fsa@fsa_maxnreg=128+fsa_tpp=2
timeout 240 python benchmarks/gpu_check.py --quick --T 65536 --G 2,8,16 --dist uniform --variants $V 2>&1 | grep -v -i warn > "$OUT/maxnreg2_T65536.log"
grep -E "FAIL|variants with|part 1|^ *[0-9]+ +uniform|^ +G|===" "$OUT/maxnreg2_T65536.log" | tail -12
SECT="--section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section ComputeWorkloadAnalysis"
PAT="Duration|DRAM Throughput|L2 Hit|Achieved Occupancy|Registers Per|Block Limit Reg|Block Limit Shared|Issued Warp|Compute \(SM\)|Dynamic Shared|spends|highest-util|Local Memory Spilling Requests  "
timeout 60 python benchmarks/ncu_fwd.py --G 8 --D 128 --T 65536 --variant fsa@fsa_maxnreg=128 --resources --backward 2>&1 | grep -v -i warn | grep -A1 "_kernel\|^fsa\|^bwd" | tee "$OUT/resources_capped_G8.log"
timeout 60 python benchmarks/ncu_fwd.py --G 16 --D 128 --T 65536 --variant nsa --resources 2>&1 | grep -v -i warn | grep -A1 "nsa" | tee "$OUT/resources_nsa_G16.log"
run_ncu() {  # name, kernel regex, skip, args...
  local name=$1 kre=$2 skip=$3; shift 3
  timeout 120 ncu --clock-control none -k regex:"$kre" --launch-skip $skip --launch-count 1 $SECT python benchmarks/ncu_fwd.py "$@" > "$OUT/ncu_$name.log" 2>&1
  echo "== ncu $name rc=$?"; grep -E "$PAT" "$OUT/ncu_$name.log" | cut -c1-200 | head -16
}
run_ncu fwd_capped_G8 fsa_fwd_kernel 2 --G 8 --D 128 --T 65536 --variant fsa@fsa_maxnreg=128
run_ncu bwd_G8 bwd_inverted_kernel 0 --G 8 --D 128 --T 65536 --backward
run_ncu nsa_G16 nsa_fwd_kernel 0 --G 16 --D 128 --T 65536 --variant nsa
