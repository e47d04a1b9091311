#!/usr/bin/env bash
# GPU run (third session of 2026-11-25): the main kernel runs 3 programs per SM (163 registers,
# 48 KB shared; ncu: 18.75% occupancy, 0.41 issued warps per scheduler). Register caps for 4
# programs per SM, checked and timed; the backward's inverted kernel read by ncu.
set -uo pipefail
. benchmarks/gpu_env.sh
V=fsa,fsa@fsa_maxnreg=128,fsa@fsa_maxnreg=128+fsa_stages=2,fsa@fsa_maxnreg=104
timeout 200 python benchmarks/gpu_check.py --quick --T 65536 --G 1,4,8 --dist uniform --variants $V 2>&1 | grep -v -i warn > "$OUT/maxnreg_T65536.log"
grep -E "FAIL|variants with|^ *[0-9]+ +uniform|^ +G|===" "$OUT/maxnreg_T65536.log" | tail -12
V=fsa,fsa@fsa_maxnreg=96,fsa@fsa_maxnreg=80,fsa@fsa_maxnreg=96+fsa_stages=2
timeout 100 python benchmarks/gpu_check.py --skip-check --T 32768 --D 64 --G 4 --dist uniform --variants $V 2>&1 | grep -v -i warn > "$OUT/maxnreg_D64_T32768.log"
grep -E "^ *[0-9]+ +uniform|^ +G|===" "$OUT/maxnreg_D64_T32768.log" | tail -4
timeout 60 python benchmarks/ncu_fwd.py --G 8 --D 128 --T 65536 --backward --resources 2>&1 | grep -v -i warn | grep -A1 "bwd\|^fsa" | tee "$OUT/resources_bwd_G8.log"
SECT="--section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section ComputeWorkloadAnalysis"
timeout 120 ncu --clock-control none -k regex:"bwd_inverted_kernel" --launch-count 1 $SECT \
    python benchmarks/ncu_fwd.py --G 8 --D 128 --T 65536 --backward > "$OUT/ncu_bwd_G8.log" 2>&1
grep -E "Duration|DRAM Throughput|L2 Hit|Achieved Occupancy|Registers Per|Block Limit Reg|Block Limit Shared|Issued Warp|Compute \(SM\)|Dynamic Shared|spends|highest-util" "$OUT/ncu_bwd_G8.log" | cut -c1-200 | head -20
timeout 150 python benchmarks/gpu_check_bwd.py --no-check --T 65536 --G 8 --dists uniform --variants "maxnreg=168;maxnreg=128" 2>&1 | grep -E "^time" | tee "$OUT/bwd_maxnreg.log"
