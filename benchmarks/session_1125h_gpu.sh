#!/usr/bin/env bash
# GPU run (third session of 2026-11-25): what bounds the inverted loop's main kernel. The
# compiler's resource report and SASS op counts, then Nsight Compute's sections for one launch
# of the main kernel and of the merge at G=8 (D=128, T=64K) and G=4 (D=64, T=32K).
set -uo pipefail
. benchmarks/gpu_env.sh
SECT="--section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section ComputeWorkloadAnalysis"
timeout 60 python benchmarks/ncu_fwd.py --G 8 --D 128 --T 65536 --resources 2>&1 | grep -v -i warn | tee "$OUT/resources_G8.log"
timeout 60 python benchmarks/ncu_fwd.py --G 4 --D 64 --T 32768 --resources 2>&1 | grep -v -i warn | tee "$OUT/resources_G4_D64.log"
for cfg in "8 128 65536" "4 64 32768"; do
  set -- $cfg
  timeout 150 ncu --clock-control none -k regex:"fsa_fwd_kernel|merge_fwd_kernel" --launch-skip 2 --launch-count 2 $SECT \
    python benchmarks/ncu_fwd.py --G $1 --D $2 --T $3 > "$OUT/ncu_G$1_D$2.log" 2>&1
  echo "== ncu G=$1 D=$2 rc=$?"; grep -E "fsa_fwd_kernel|merge_fwd_kernel|Duration|Memory Throughput|DRAM Throughput|L2 Hit|L1/TEX Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|Issued Warp|Compute \(SM\)|No Eligible|Stall|Dynamic Shared|Static Shared|spends|stalled" "$OUT/ncu_G$1_D$2.log" | cut -c1-400 | head -80
done
