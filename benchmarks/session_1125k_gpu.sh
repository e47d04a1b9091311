#!/usr/bin/env bash
# GPU run (third session of 2026-11-25): the forward's register cap with 4/8/16 sub-tiles at
# G=1/4/8; the backward's inverted kernel (255 registers, spills, 2 programs per SM) with 8 warps
# or 32-key sub-blocks, checked and timed.
set -uo pipefail
. benchmarks/gpu_env.sh
V=fsa,fsa@fsa_maxnreg=128,fsa@fsa_maxnreg=128+fsa_tpp=8,fsa@fsa_maxnreg=128+fsa_tpp=16
timeout 200 python benchmarks/gpu_check.py --quick --T 65536 --G 1,4,8 --dist uniform --variants $V 2>&1 | grep -v -i warn > "$OUT/maxnreg3_T65536.log"
grep -E "FAIL|variants with|part 1|^ *[0-9]+ +uniform|^ +G|===" "$OUT/maxnreg3_T65536.log" | tail -12
timeout 330 python benchmarks/gpu_check_bwd.py --quick --T 65536 --G 1,4,8,16 --dists uniform \
  --variants "num_warps=8;block_n=32,nsub=2;num_warps=8,num_stages=2;block_n=32,nsub=2,num_stages=2" 2>&1 | grep -v -i warn > "$OUT/bwd_warps.log"
grep -E "^time|correctness|FAIL" "$OUT/bwd_warps.log" | sed 's/, dense bwd.*ratio/ ratio/; s/extra \([0-9.]*\) GiB.*/extra \1/'
