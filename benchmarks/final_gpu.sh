#!/usr/bin/env bash
# Last device call of a session: fsa training at T=64K, the -m gpu tests, and a profile of one
# fsa training step of the example model at T=32K (where the e2e step spends its time).
set -uo pipefail
. benchmarks/gpu_env.sh
timeout 110 python -m fsa_compile bench --e2e --T 65536 --backends fsa --layers 2 --steps 2 --json "$OUT/e2e_64k.json" 2>&1 | grep -v -i warn | tail -4
timeout 120 python -m pytest -m gpu -q -x -p no:cacheprovider tests/test_kernels_forward.py tests/test_kernels_backward.py 2>&1 | tail -4
timeout 90 python - <<'PY' 2>&1 | grep -v -i warn | tail -22
import sys, torch
sys.path.insert(0, "examples")
import fsa_compile
from nsa_model import NSAConfig, NSAModel
cfg = NSAConfig(dim=1024, layers=2, heads=16, kv_heads=4, head_dim=64)
m = NSAModel(cfg).cuda().bfloat16()
f = torch.compile(m, backend="fsa")
x = torch.randint(0, 256, (1, 32769), device="cuda")
def step():
    loss = torch.nn.functional.cross_entropy(f(x[:, :-1]).float().reshape(-1, 256), x[:, 1:].reshape(-1)); loss.backward()
step(); step(); torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
    step(); torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
PY
