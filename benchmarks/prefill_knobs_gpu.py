"""Prefill of the example NSA model under backend="fsa" with a few knobs turned, one process:
the sliding branch's query chunk without gradients and the inverted loop's chunk of query tokens
(through the partial buffer's budget), against the same model's dense-attention twin. Each
variant compiles afresh; its output is checked against the first variant's.

    python benchmarks/prefill_knobs_gpu.py [--T 32768] [--steps 30]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

import fsa_compile  # noqa: E402,F401

# the examples beside the fsa_compile imported (PYTHONPATH may point at another checkout)
sys.path.insert(0, str(Path(fsa_compile.__file__).resolve().parents[1] / "examples"))
from fsa_compile.lowering import plan as plan_mod  # noqa: E402
from nsa_model import NSAConfig, NSAModel  # noqa: E402

# per query token, the e2e model's partials (HQ 16, n 16, head dim 64, bf16 + fp32 lse)
PER_TOK = 16 * 16 * (64 * 2 + 4)


def prefill_ms(attention, win_chunk, budget, x, steps, backend="fsa", kernels=False):
    """Best wall ms of 3 runs, the runs, profiled GPU ms and kernel count, the output; with
    ``kernels`` also print the kernel table by launch count."""
    torch._dynamo.reset()
    plan_mod.PARTIAL_BUDGET = budget
    torch.manual_seed(0)
    # the prefill's sliding chunk: win_chunk_no_grad where the model has it (before 2026-12-01
    # the prefill used win_chunk)
    win = {"win_chunk_no_grad" if hasattr(NSAConfig, "win_chunk_no_grad") else "win_chunk": win_chunk}
    cfg = NSAConfig(dim=1024, layers=2, heads=16, kv_heads=4, head_dim=64, attention=attention,
                    max_seq=max(x.shape[1], NSAConfig.max_seq), **win)
    model = NSAModel(cfg).cuda().bfloat16().eval()
    f = torch.compile(model, backend=backend)
    with torch.no_grad():
        out = f(x)
        f(x)
        torch.cuda.synchronize()
        times = []
        for _ in range(3):  # three timed runs of `steps` back-to-back passes; the best is kept
            t0 = time.perf_counter()
            for _ in range(steps):
                f(x)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / steps * 1e3)
        # GPU time of one pass and its kernel count, from the profiler
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
            f(x)
            torch.cuda.synchronize()
    if kernels:
        print(p.key_averages().table(sort_by="count", row_limit=80, max_name_column_width=60), flush=True)
    ka = [e for e in p.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    gpu = sum(e.self_device_time_total for e in ka) / 1e3
    return min(times), times, gpu, sum(e.count for e in ka), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--chunks", default="0,32768,4096,1024,512", help="inverted-loop chunks (0: the default budget)")
    ap.add_argument("--win", default="256,128")
    ap.add_argument("--kernels", action="store_true")
    a = ap.parse_args()
    default_budget = plan_mod.PARTIAL_BUDGET
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (1, a.T), generator=g).cuda()
    print(torch.__version__, torch.cuda.get_device_name(), f"T={a.T}", flush=True)
    dense = prefill_ms("dense", 256, default_budget, x, a.steps, backend="inductor")
    print(f"dense: {dense[0]:.2f} ms (runs {', '.join(f'{t:.2f}' for t in dense[1])}), "
          f"GPU {dense[2]:.2f} ms in {dense[3]} kernels", flush=True)
    rows, ref = [], None
    for win in [int(w) for w in a.win.split(",")]:
        for c in [int(c) for c in a.chunks.split(",")]:
            budget = default_budget if c == 0 else c * PER_TOK
            ms, runs, gpu, nk, out = prefill_ms("nsa", win, budget, x, a.steps, kernels=a.kernels and ref is None)
            if ref is None:
                ref = out.float()
            err = (out.float() - ref).abs().max().item()
            name = f"win {win}, chunk {'default' if c == 0 else c}"
            rows.append((name, ms, gpu, nk, err))
            print(f"{name}: {ms:.2f} ms (runs {', '.join(f'{t:.2f}' for t in runs)}), GPU {gpu:.2f} ms "
                  f"in {nk} kernels, max |diff| vs first {err:.3g}, dense/this {dense[0] / ms:.3f}", flush=True)
    base = prefill_ms("nsa", int(a.win.split(",")[0]), default_budget, x, a.steps)
    print(f"first variant again: {base[0]:.2f} ms, GPU {base[2]:.2f} ms", flush=True)
    print(f"\nT={a.T} prefill, ms (best of 3 runs of {a.steps}); dense {dense[0]:.2f} ms, GPU {dense[2]:.2f}")
    print(f"{'variant':<28}{'wall':>8}{'GPU':>8}{'kernels':>9}{'dense/x':>9}{'max diff':>10}")
    for name, ms, gpu, nk, err in rows:
        print(f"{name:<28}{ms:8.2f}{gpu:8.2f}{nk:9d}{dense[0] / ms:9.3f}{err:10.3g}")


if __name__ == "__main__":
    main()
