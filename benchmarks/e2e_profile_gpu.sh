#!/usr/bin/env bash
# GPU run: the e2e table again (after the rewrite stopped handing the op mixed dtypes), and a
# profile of one fsa training step and one prefill of the example model at T=32K.
# Usage on the device machine: bash benchmarks/e2e_profile_gpu.sh "<T list>" [layers]
set -uo pipefail
. benchmarks/gpu_env.sh
TS=${1:-4096,8192,16384,32768}
LAYERS=${2:-2}
timeout 330 python -m fsa_compile bench --e2e --T "$TS" --layers "$LAYERS" --backends inductor,fsa,dense --steps 3 \
  --json "$OUT/e2e.json" --plot "$OUT/e2e.png" 2>&1 | grep -v -i warn | tail -12
timeout 150 python - <<'PY' 2>&1 | grep -v -i warn | tail -45
import sys, time, torch
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
print("== fsa training step, T=32K")
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
with torch.no_grad():
    f(x[:, :-1]); torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        f(x[:, :-1]); torch.cuda.synchronize()
print("== fsa prefill, T=32K")
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
PY
