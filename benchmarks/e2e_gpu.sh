#!/usr/bin/env bash
# GPU run for issue 5/6: the 50-step loss curve (eager vs fsa) and the end-to-end table.
# Usage on the device machine: bash benchmarks/e2e_gpu.sh "<T list>" [layers] [backends]
# (FRESH_EAGER=1 measures eager's loss curve again instead of reusing the saved one; LOSS_CURVE=0
# skips the curves.)
set -uo pipefail
. benchmarks/gpu_env.sh
TS=${1:-4096,8192}
LAYERS=${2:-2}
if [ "${LOSS_CURVE:-1}" = 1 ]; then
  for b in eager fsa; do
    if [ $b = eager ] && [ "${FRESH_EAGER:-0}" != 1 ] && [ -f benchmarks/results/loss_eager_T2048.json ]; then
      cp benchmarks/results/loss_eager_T2048.json "$OUT/loss_eager.json"  # measured earlier on the same machine kind
      continue
    fi
    python examples/train.py --backend $b --steps 50 --T 2048 --layers 2 --dim 512 --log-json "$OUT/loss_$b.json" 2>&1 | tr '\r' '\n' | tail -1
  done
  python - "$OUT" <<'PY'
import json, sys
e = json.load(open(f"{sys.argv[1]}/loss_eager.json"))["losses"]
f = json.load(open(f"{sys.argv[1]}/loss_fsa.json"))["losses"]
d = [abs(a - b) for a, b in zip(e, f)]
print(f"loss curve, 50 steps, T=2048, bf16: eager {e[0]:.4f} -> {e[-1]:.4f}, fsa {f[0]:.4f} -> {f[-1]:.4f}, "
      f"max |diff| {max(d):.4f}, mean |diff| {sum(d)/len(d):.4f}")
for i in (0, 9, 19, 29, 39, 49):
    print(f"  step {i+1:2d}: eager {e[i]:.4f}  fsa {f[i]:.4f}")
PY
fi
BACKENDS=${3:-inductor,fsa,dense}
python -m fsa_compile bench --e2e --T "$TS" --layers "$LAYERS" --backends "$BACKENDS" --steps 10 \
  --json "$OUT/e2e.json" --plot "$OUT/e2e.png"
