#!/usr/bin/env bash
# GPU run of 2026-12-01, ninth session (H200), third call: the pattern pass timed inside the e2e
# 32K compile, with this code and with 7e8d898's, carried as an untracked tree made by
#   git archive 7e8d898 fsa_compile examples | tar -x -C old7e8   (plus benchmarks/pass_time.py)
set -uo pipefail
. benchmarks/gpu_env.sh
for R in $PWD $PWD/old7e8; do
  PYTHONPATH=$R:/tmp/fsa_ep timeout 200 python benchmarks/pass_in_e2e.py $R --T 32768 --layers 2 --backends fsa --steps 5 2>&1 | grep -E "pattern pass|T= 32768" | cut -c1-250
done
