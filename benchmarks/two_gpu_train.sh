#!/usr/bin/env bash
# Issue 6's last item, for a session lent `nvidia-h200-x2`: the training example on two GPUs under
# torchrun (DDP and FSDP2), against one process with the same global batch, one call.
# Prints tokens/s per process and the largest loss difference to the one-process run.
# Written 2026-12-01 (seventh session) with no machine lent; not yet run on GPUs.
set -uo pipefail
. benchmarks/gpu_env.sh
# The device image keeps NVLink multicast off; keep it off in the ranks' environment as well.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -c 'import torch; print("GPUs:", torch.cuda.device_count())'
T=${T:-4096}
STEPS=${STEPS:-50}
common="--backend fsa --steps $STEPS --T $T --layers 2 --dim 1024 --heads 16 --kv-heads 4 --head-dim 64"
timeout 170 python3 examples/train.py $common --batch 2 --log-json "$OUT/train_1gpu_b2.json" \
  > "$OUT/train_1gpu_b2.log" 2>&1; echo "1 GPU, batch 2: rc=$?"; tr "\r" "\n" < "$OUT/train_1gpu_b2.log" | tail -2
for dist in ddp fsdp; do
  timeout 190 torchrun --standalone --nproc-per-node 2 examples/train.py $common --batch 1 --dist $dist \
    --log-json "$OUT/train_2gpu_$dist.json" > "$OUT/train_2gpu_$dist.log" 2>&1
  echo "2 GPUs, $dist, batch 1 each: rc=$?"; tr "\r" "\n" < "$OUT/train_2gpu_$dist.log" | tail -2
done
python3 benchmarks/compare_losses.py "$OUT/train_1gpu_b2.json" "$OUT/train_2gpu_ddp.json" "$OUT/train_2gpu_fsdp.json"
