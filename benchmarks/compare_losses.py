"""Loss curves of examples/train.py runs (``--log-json``) against the first one given.

    python benchmarks/compare_losses.py one_process.json two_ranks_ddp.json two_ranks_fsdp.json

Prints, per run, its first and last loss, the largest and mean absolute difference to the
first run step by step, and its tokens/s after the first step and over the last stretch (where
recorded); exits with status 1 if the curves have different lengths.
"""
from __future__ import annotations

import json
import sys


def load(path):
    with open(path) as f:
        d = json.load(f)
    return d, d["losses"]


def _rate(d, key) -> str:
    """``tok_s``: tokens/s after the first (compiling) step; ``tok_s_last``: over the last stretch
    of ``--log-every`` steps (past any warm-up); where the run recorded them."""
    r = d.get(key)
    return f"{r:,.0f}" if r else "-"


def main(paths):
    if len(paths) < 2:
        print(__doc__)
        return 2
    base, ref = load(paths[0])
    print(f"{'run':<40} {'world':>5} {'first':>8} {'last':>8} {'max |diff|':>11} {'mean |diff|':>12} {'tok/s':>11} {'last':>11}")
    status = 0
    for p in paths:
        d, losses = load(p)
        if len(losses) != len(ref):
            print(f"{p}: {len(losses)} steps, the first run has {len(ref)}")
            status = 1
            continue
        diffs = [abs(a - b) for a, b in zip(losses, ref)]
        print(f"{p[-40:]:<40} {d.get('world', 1):>5} {losses[0]:>8.4f} {losses[-1]:>8.4f} "
              f"{max(diffs):>11.5f} {sum(diffs) / len(diffs):>12.5f} {_rate(d, 'tok_s'):>11} {_rate(d, 'tok_s_last'):>11}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
