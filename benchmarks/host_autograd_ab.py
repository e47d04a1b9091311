"""Host time of one forward + backward call of the op, with the autograd context as it is (an
unused output reaches the backward as None) and as it was before 2026-12-01's sixth session
(materialised zero gradients), alternated in one process so that both see the same host.

    python benchmarks/host_autograd_ab.py [--shapes 8192:1:128,4096:4:64] [--calls 200] [--rounds 5]

Each shape is ``T:G:D`` (B = 1, H = 4, block 64, n = 16, bf16). Prints, per variant, the median
over rounds of the mean host time per call (the host returns before the GPU is done), the time
with the GPU, and whether the backward saw ``dlse`` as None.
"""
import argparse
import importlib
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

import fsa_compile  # noqa: E402
from fsa_compile.selection import uniform_selection  # noqa: E402
from op_host_cost import host_time  # noqa: E402  (warm-up, then host time and time with the GPU)

op_mod = importlib.import_module("fsa_compile.op")


def old_context(real):
    def setup(ctx, inputs, output):
        real(ctx=ctx, inputs=inputs, output=output)
        ctx.set_materialize_grads(True)  # zeros for every output the loss does not use
    return setup


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192:1:128,4096:4:64")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    opdef = op_mod._selected_attention
    real_setup = opdef._setup_context_fn
    seen = []
    real_bwd = op_mod._kernel_backward

    def spy(do, *args, dlse=None, **kw):
        seen.append(dlse is None)
        return real_bwd(do, *args, dlse=dlse, **kw)

    op_mod._kernel_backward = spy
    print(torch.__version__, torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", flush=True)
    for spec in a.shapes.split(","):
        T, G, D = (int(x) for x in spec.split(":"))
        B, H, bs, n = 1, 4, 64, 16
        mk = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
        q, k, v = mk(B, T, H * G, D), mk(B, T, H, D), mk(B, T, H, D)
        idx = uniform_selection(B, T, H, n, bs, device=dev)
        do = torch.randn(B, T, H * G, D, device=dev, dtype=torch.bfloat16)

        def step():
            o = fsa_compile.selected_attention(q, k, v, idx, bs, on_out_of_range="assert")
            torch.autograd.grad(o, (q, k, v), do)

        res = {"now": [], "old": []}
        walls = {"now": [], "old": []}
        saw = {}
        for r in range(a.rounds):
            for name in ("now", "old"):
                opdef._setup_context_fn = real_setup if name == "now" else old_context(real_setup)
                seen.clear()
                host, wall = host_time(step, a.calls)
                res[name].append(host)
                walls[name].append(wall)
                saw[name] = all(seen) if seen else None
        opdef._setup_context_fn = real_setup
        print(f"T={T} G={G} D={D}: ms per forward + backward call, median of {a.rounds} rounds "
              f"of {a.calls}")
        for name in ("old", "now"):
            print(f"  {name}: host {statistics.median(res[name]):.3f}, with the GPU "
                  f"{statistics.median(walls[name]):.3f}, dlse None in the backward: {saw[name]}",
                  flush=True)


if __name__ == "__main__":
    main()
