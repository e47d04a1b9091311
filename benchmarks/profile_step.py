"""CUDA kernel profile of the example NSA model under backend="fsa": one training step, and with
--prefill one forward pass too (--no-train: that pass only; --attention dense: the dense
baseline model). Used by the GPU scripts of benchmarks/.

    python benchmarks/profile_step.py [--T 32768] [--rows 22] [--prefill] [--no-train] [--attention dense]
"""
import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fsa_compile  # noqa: E402,F401  (registers backend="fsa" without the entry point)
from nsa_model import NSAConfig, NSAModel  # noqa: E402


def _table(prof, rows):
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=int(os.environ.get("PROFILE_NAME_WIDTH", "70")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--rows", type=int, default=22)
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--attention", default="nsa", choices=["nsa", "dense"])
    ap.add_argument("--no-train", action="store_true", help="profile the prefill only")
    args = ap.parse_args()
    cfg = NSAConfig(dim=1024, layers=2, heads=16, kv_heads=4, head_dim=64, attention=args.attention)
    f = torch.compile(NSAModel(cfg).cuda().bfloat16(), backend="fsa")
    x = torch.randint(0, cfg.vocab, (1, args.T + 1), device="cuda")
    cuda = [torch.profiler.ProfilerActivity.CUDA]

    def step():
        logits = f(x[:, :-1]).float().reshape(-1, cfg.vocab)
        torch.nn.functional.cross_entropy(logits, x[:, 1:].reshape(-1)).backward()

    if not args.no_train:
        for _ in range(2):  # compile, then warm
            step()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=cuda) as p:
            step()
            torch.cuda.synchronize()
        print(f"== {args.attention} training step, T={args.T}")
        print(_table(p, args.rows))
    if args.prefill or args.no_train:
        with torch.no_grad():
            f(x[:, :-1])
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=cuda) as p:
                f(x[:, :-1])
                torch.cuda.synchronize()
        print(f"== {args.attention} prefill, T={args.T}")
        print(_table(p, args.rows))


if __name__ == "__main__":
    main()
