"""Prefill latency of the NSA model (examples/nsa_model.py) for a long prompt, per backend.

    python examples/prefill.py [--T 16384] [--backends eager,inductor,fsa]

Each backend runs the same weights on the same prompt; a backend that runs out of memory is
reported as such. Prints the logits' agreement with the first backend that fits.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nsa_model import NSAConfig, NSAModel  # noqa: E402
from train import compile_model  # noqa: E402


def prefill_ms(model, tokens, reps):
    with torch.no_grad():
        model(tokens)  # compile + warm-up
        if tokens.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            out = model(tokens)
        if tokens.is_cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3, out


def main(argv=None):
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=16384 if cuda else 256)
    ap.add_argument("--backends", default="eager,inductor,fsa")
    ap.add_argument("--reps", type=int, default=5 if cuda else 1)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    max_seq = max(args.T, NSAConfig.max_seq)  # the rotary tables cover the prompt
    cfg = NSAConfig(dim=64, layers=2, heads=4, kv_heads=2, head_dim=16, block_size=16, n=4, window=32,
                    cmp_block=8, cmp_stride=4, max_seq=max_seq) if args.tiny or not cuda else NSAConfig(
        dim=512, layers=4, heads=16, kv_heads=4, head_dim=64, max_seq=max_seq)
    torch.manual_seed(0)
    model = NSAModel(cfg).to(device, dtype).eval()
    tokens = torch.randint(0, cfg.vocab, (1, args.T), device=device)
    ref = None
    print(f"prefill of {args.T} tokens on {device} ({dtype})")
    results = {}
    for backend in args.backends.split(","):
        torch._dynamo.reset()
        try:
            ms, out = prefill_ms(compile_model(model, backend), tokens, args.reps)
        except torch.OutOfMemoryError:
            print(f"{backend:10} out of memory")
            results[backend] = None
            continue
        agree = ""
        if ref is None:
            ref = out.float()
        else:
            agree = f"  max |logits - first| {(out.float() - ref).abs().max().item():.3g}"
        results[backend] = ms
        print(f"{backend:10} {ms:10.2f} ms{agree}", flush=True)
        del out
        if cuda:
            torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()
