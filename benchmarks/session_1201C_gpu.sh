#!/usr/bin/env bash
# GPU run of 2026-12-01, sixth session (H200): the op's forward + backward launched as usual and
# replayed from a CUDA graph, at short T.
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 300 python benchmarks/op_cudagraph_gpu.py > "$OUT/op_cudagraph_1201C.log" 2>&1
echo "rc=$?"; tail -12 "$OUT/op_cudagraph_1201C.log"
