"""Where a step of examples/train.py goes at a short T: its loop against variants (the same batch
every step, no optimizer step, no autocast context), one compiled model for all, then the GPU's
busy time per step (torch.profiler) against the wall time, and the host ops by own CPU time.

    python benchmarks/train_loop_gpu.py [--T 4096] [--steps 30] [--rows 20] [--device cpu]
"""
import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fsa_compile  # noqa: E402,F401  (registers backend="fsa" without the entry point)
import train  # noqa: E402
from nsa_model import NSAModel  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script at the tiny size")
    a = ap.parse_args()
    args = argparse.Namespace(T=a.T, tiny=a.device == "cpu", dim=512, layers=4, heads=16, kv_heads=4, head_dim=64)
    cfg = train.config_for(args)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = NSAModel(cfg).to(device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    compiled = train.compile_model(model, "fsa")
    fixed = train.synthetic_batch(1, a.T, cfg.vocab, torch.Generator().manual_seed(0), dev)

    def step(i, fresh=True, optimizer=True, ctx=True):
        batch = train.synthetic_batch(1, a.T, cfg.vocab, torch.Generator().manual_seed(i), dev) if fresh else fixed
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=False) if ctx else contextlib.nullcontext():
            logits = compiled(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg.vocab), batch[:, 1:].reshape(-1))
        if optimizer:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer:
            opt.step()
        return loss.detach()

    t0 = time.perf_counter()
    for i in range(3):
        step(i).item()
    print(f"compile and 3 steps: {time.perf_counter() - t0:.1f} s", flush=True)
    variants = [("train.py's loop", {}), ("same batch every step", {"fresh": False}),
                ("no optimizer step", {"optimizer": False}), ("no autocast context", {"ctx": False}),
                ("same batch, no optimizer, no context", {"fresh": False, "optimizer": False, "ctx": False})]
    rows = []
    name0 = variants[0][0]
    for name, kw in variants:
        step(0, **kw).item()  # a recompile, if the variant needs one, stays out of the timing
        sync()
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(i, **kw)
        sync()
        ms = (time.perf_counter() - t0) / a.steps * 1e3
        rows.append((name, ms))
        print(f"{name:<40} {ms:7.2f} ms/step  {a.T / ms * 1e3:>10,.0f} tok/s", flush=True)

    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    n = 5
    sync()
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            step(i)
        sync()
        wall = (time.perf_counter() - t0) / n * 1e3
    ev = prof.key_averages()
    # (the GPU's busy time is the table's "Self CUDA time total" over the steps; a sum over the
    # rows counts each kernel twice, under its own name and under the op that launched it)
    print(f"\nprofiled ({n} steps of {name0!r}): wall {wall:.2f} ms/step under the profiler; "
          f"GPU busy: the table's Self CUDA time total / {n}")
    width = int(os.environ.get("PROFILE_NAME_WIDTH", "60"))
    print(ev.table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=width))
    print("\nsummary (ms/step):")
    for name, ms in rows:
        print(f"  {name:<40} {ms:7.2f}")


if __name__ == "__main__":
    main()
