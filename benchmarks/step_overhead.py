"""Where the fixed cost of a short training step goes: the example model at a small T under
backend="fsa" (with and without the top-k rewrite) and the dense model, step times, then the
host-side (CPU) profile of one fsa step, sorted by self CPU time.

    python benchmarks/step_overhead.py [--T 4096] [--rows 25]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fsa_compile  # noqa: E402,F401
from nsa_model import NSAConfig, NSAModel  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    x = torch.randint(0, 256, (1, args.T + 1), device="cuda")
    runs = [("fsa", "nsa", {}), ("fsa, topk off", "nsa", {"topk": False}), ("dense", "dense", None)]
    for name, attention, opts in runs:
        torch._dynamo.reset()
        torch.manual_seed(0)
        cfg = NSAConfig(dim=1024, layers=2, heads=16, kv_heads=4, head_dim=64, attention=attention)
        m = NSAModel(cfg).cuda().bfloat16()
        f = torch.compile(m) if opts is None else torch.compile(m, backend="fsa", options=opts)

        def step():
            logits = f(x[:, :-1]).float().reshape(-1, cfg.vocab)
            torch.nn.functional.cross_entropy(logits, x[:, 1:].reshape(-1)).backward()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        host = (time.perf_counter() - t0) / 10
        torch.cuda.synchronize()
        total = (time.perf_counter() - t0) / 10
        print(f"{name:<15} T={args.T}: {total * 1e3:7.2f} ms/step (host returned after {host * 1e3:.2f} ms)", flush=True)
        if name == "fsa":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                step()
                torch.cuda.synchronize()
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
