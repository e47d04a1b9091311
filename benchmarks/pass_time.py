"""Time the fsa pattern pass alone on the e2e model's Dynamo graph (no Inductor, no kernels).

    python benchmarks/pass_time.py --T 4096 --layers 2 [--profile]

Dynamo traces examples/nsa_model.py (bf16, the e2e bench's model) once; the backend times
``rewrite_graph`` on the graph and stops the compile there. Prints the pass time, what it
rewrote, and how many rewrites reused an earlier layer's checks.
"""
import argparse
import cProfile
import os
import pstats
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples")]

import torch  # noqa: E402

import nsa_model  # noqa: E402
from fsa_compile import backend  # noqa: E402


class _Done(Exception):
    pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="print the 25 most expensive functions")
    p.add_argument("--prefill", action="store_true",
                   help="then trace the model again under no_grad, as a prefill after training does")
    args = p.parse_args()
    cfg = nsa_model.NSAConfig(dim=1024, layers=args.layers, heads=16, kv_heads=4, head_dim=64, attention="nsa",
                              max_seq=max(args.T, nsa_model.NSAConfig.max_seq))
    torch.manual_seed(0)
    model = nsa_model.NSAModel(cfg).to(torch.bfloat16)
    tokens = torch.randint(0, cfg.vocab, (1, args.T))
    prof = cProfile.Profile()
    results = []

    def timed_pass(gm, example_inputs):
        start = time.perf_counter()
        if args.profile:
            prof.enable()
        res = backend.rewrite_graph(gm, "auto", True)
        prof.disable()
        results.append((time.perf_counter() - start, res))
        raise _Done

    for mode in ["training", "prefill"][: 2 if args.prefill else 1]:
        torch._dynamo.reset()
        try:
            with torch.set_grad_enabled(mode == "training"):
                torch.compile(model, backend=timed_pass)(tokens)
        except Exception:  # Dynamo wraps the backend's exception
            if len(results) < (1 if mode == "training" else 2):
                raise
        seconds, res = results[-1]
        shared = sum(1 for r in res.rewrites if getattr(r, "same_as", ""))  # (older code: no such field)
        print(f"T={args.T} layers={args.layers} {mode}: pass {seconds:.1f} s, {len(res.rewrites)} attention rewrites "
              f"({shared} reused earlier checks), {len(res.others)} top-k, {len(res.misses)} misses")
    if args.profile:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
