"""End-to-end benchmark: the NSA model of examples/ trained and prefilled under each backend.

``python -m fsa_compile bench --e2e``: for each sequence length, one process, side by side:
training-step tokens/s and prefill latency for ``eager``, ``inductor`` (default torch.compile)
and ``fsa`` on the same NSA model, and ``dense`` (the same model with its attention swapped for
causal SDPA, compiled with Inductor). A backend that runs out of memory at some T is marked OOM
and not tried at longer T, so the table also shows how far each one goes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import backend as fsa_backend

BACKENDS = ("eager", "inductor", "fsa", "dense")


def _examples():
    here = Path(__file__).resolve().parents[1] / "examples"
    if not (here / "nsa_model.py").exists():
        raise SystemExit("bench --e2e needs the repository's examples/ folder (run it from a checkout)")
    sys.path.insert(0, str(here))
    import nsa_model  # noqa: F401

    return nsa_model


def _model(nsa_model, backend, cfg_kw, device, dtype, T):
    cfg = nsa_model.NSAConfig(**cfg_kw, attention="dense" if backend == "dense" else "nsa",
                              max_seq=max(T, nsa_model.NSAConfig.max_seq))  # rotary tables cover T
    torch.manual_seed(0)
    model = nsa_model.NSAModel(cfg).to(device, dtype)
    if backend == "eager":
        compiled = model
    elif backend in ("inductor", "dense"):
        compiled = torch.compile(model)
    else:
        compiled = torch.compile(model, backend="fsa")
    return cfg, model, compiled


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _train_step(compiled, opt, batch, vocab):
    logits = compiled(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), batch[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _row(r) -> str:
    passed = f" (pattern pass {r['pass_s']} s)" if "pass_s" in r else ""
    return (f"train {r['train_ms']:.1f} ms/step ({r['train_tok_s']:,.0f} tok/s, peak {r['train_peak_gib']:.1f} GiB), "
            f"prefill {_fmt(r, 'prefill_ms', '{:.1f} ms')}, compile {r['compile_s']} s{passed}, loss0 {r['loss0']:.4f}")


def measure(nsa_model, backend, T, cfg_kw, steps, device, dtype):
    """Training tokens/s, first-step loss, prefill ms and peak GiB, or OOM, for one (backend, T)."""
    out = {"backend": backend, "T": T}
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        cfg, model, compiled = _model(nsa_model, backend, cfg_kw, device, dtype, T)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        batch = torch.randint(0, cfg.vocab, (1, T + 1), generator=g).to(device)
        t0 = time.perf_counter()
        passes: list = []  # the pattern pass's results of the graphs compiled here
        fsa_backend._collectors.append(passes)
        try:
            out["loss0"] = _train_step(compiled, opt, batch, cfg.vocab).item()  # compile + first step
            _train_step(compiled, opt, batch, cfg.vocab)
            _sync()
        finally:
            fsa_backend._collectors.remove(passes)
        out["compile_s"] = round(time.perf_counter() - t0, 1)
        if passes:
            out["pass_s"] = round(sum(r.seconds for r in passes), 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            _train_step(compiled, opt, batch, cfg.vocab)
        _sync()
        dt = (time.perf_counter() - t0) / steps
        out["train_ms"] = dt * 1e3
        out["train_tok_s"] = T / dt
        out["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
        del opt
        model.eval()
        with torch.no_grad():
            compiled(batch[:, :-1])
            _sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                compiled(batch[:, :-1])
            _sync()
        out["prefill_ms"] = (time.perf_counter() - t0) / steps * 1e3
    except torch.OutOfMemoryError:
        out["oom"] = True
    finally:
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _fmt(r, key, fmt):
    if r is None:
        return "-"
    if r.get("oom") and key not in r:
        return "OOM"
    return fmt.format(r[key]) if key in r else "-"


def table(results, Ts, backends) -> str:
    lines = []
    head = f"{'T':>7} " + "".join(f"{b + ' tok/s':>16}" for b in backends) + "".join(f"{b + ' prefill':>16}" for b in backends)
    lines.append(head)
    for T in Ts:
        row = {r["backend"]: r for r in results if r["T"] == T}
        cells = [_fmt(row.get(b), "train_tok_s", "{:,.0f}") for b in backends]
        cells += [_fmt(row.get(b), "prefill_ms", "{:.1f} ms") for b in backends]
        lines.append(f"{T:>7} " + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fsa_compile bench --e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    from .bench import choice_list, int_list

    ap.add_argument("--T", type=int_list, default="4096,8192,16384,32768",
                    help="sequence lengths, e.g. 4096,32K (default %(default)s)")
    ap.add_argument("--backends", type=choice_list(BACKENDS), default=",".join(BACKENDS),
                    help="default %(default)s")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (default %(default)s)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="save a plot (PNG) of tokens/s vs T here")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU (checks the script, measures nothing)")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        cfg_kw = dict(dim=64, layers=1, heads=4, kv_heads=2, head_dim=16, block_size=16, n=4, window=32,
                      cmp_block=8, cmp_stride=4)
        nsa_model = _examples()
        results = [measure(nsa_model, b, T, cfg_kw, 1, torch.device("cpu"), torch.float32)
                   for T in (64, 128) for b in ("eager", "fsa")]
        for r in results:
            print(f"  T={r['T']:>6} {r['backend']:9} ... {_row(r)}")
        print(table(results, [64, 128], ["eager", "fsa"]))
        if args.json:
            Path(args.json).write_text(json.dumps({"config": cfg_kw, "results": results}, indent=1))
        return 0 if all("prefill_ms" in r for r in results) else 1
    if not torch.cuda.is_available():
        print("bench --e2e needs a CUDA GPU (none found); the examples run on the CPU: "
              "python examples/train.py --tiny", file=sys.stderr)
        return 2
    from .bench import plot_wanted

    want_plot = plot_wanted(args.plot)
    nsa_model = _examples()
    Ts, backends = args.T, args.backends
    cfg_kw = dict(dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim)
    device, dtype = torch.device("cuda"), torch.bfloat16
    print(f"e2e: {torch.cuda.get_device_name()}, bf16, batch 1, model {cfg_kw}", flush=True)
    results, dead = [], set()
    for T in Ts:
        for b in backends:
            if b in dead:
                results.append({"backend": b, "T": T, "oom": True, "skipped": True})
                continue
            print(f"  T={T:>6} {b:9} ...", end="", flush=True)
            r = measure(nsa_model, b, T, cfg_kw, args.steps, device, dtype)
            results.append(r)
            if r.get("oom") and "train_tok_s" not in r:
                dead.add(b)
                print(" out of memory", flush=True)
            else:
                print(" " + _row(r), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"config": cfg_kw, "results": results}, indent=1))
    print()
    print(table(results, Ts, backends))
    longest = {b: max([r["T"] for r in results if r["backend"] == b and "train_tok_s" in r], default=None) for b in backends}
    print("longest T trained: " + ", ".join(f"{b} {t}" for b, t in longest.items()))
    if want_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for b in backends:
            pts = [(r["T"], r["train_tok_s"]) for r in results if r["backend"] == b and "train_tok_s" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=b)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (tokens)")
        ax.set_ylabel("training tokens/s")
        ax.set_title("NSA model, one H100, bf16, batch 1")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
