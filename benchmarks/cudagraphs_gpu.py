"""Does CUDA-graph replay (torch.compile mode="reduce-overhead") remove the host-side cost of
short training steps under backend="fsa"? The example model per T, default mode and
reduce-overhead, fsa and the dense model; training step (forward, backward, AdamW) and prefill,
first-step loss of each (the same weights and batch, so they must agree), and Inductor's count
of graphs it could not capture.

    python benchmarks/cudagraphs_gpu.py [--T 4096,8192,16384,32768] [--steps 10]
        [--models fsa,dense] [--modes default,reduce-overhead] [--profile] [--old-autograd] [--why]

``--profile`` prints a torch.profiler table of three training steps per run and Inductor's
cudagraph counters; ``--old-autograd`` runs the op with its autograd context as before
2026-12-01's sixth session (zero gradients materialised for unused outputs), for an A/B.
``--why`` prints, for every graph Inductor compiles, what its CUDA-graph wrapping step saw (the
reasons it records for not capturing, the partitions): with graph partitions torch drops a graph
that has such reasons silently, with no log line and no skip counted.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fsa_compile  # noqa: E402,F401
from nsa_model import NSAConfig, NSAModel  # noqa: E402


def run(T, attention, backend, mode, steps, profile=False):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    cfg = NSAConfig(dim=1024, layers=2, heads=16, kv_heads=4, head_dim=64, attention=attention)
    model = NSAModel(cfg).cuda().bfloat16()
    f = torch.compile(model, backend=backend, mode=mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab, (1, T + 1), generator=g).cuda()

    def step():
        torch.compiler.cudagraph_mark_step_begin()
        logits = f(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg.vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    loss0 = step().item()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    train = (time.perf_counter() - t0) / steps
    with torch.no_grad():
        for _ in range(3):
            torch.compiler.cudagraph_mark_step_begin()
            f(x[:, :-1])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            torch.compiler.cudagraph_mark_step_begin()
            f(x[:, :-1])
        torch.cuda.synchronize()
        prefill = (time.perf_counter() - t0) / steps
    skips = sum(counters["inductor"].get(k, 0) for k in counters["inductor"] if "cudagraph_skip" in k)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof_ctx

        with prof_ctx(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(f"--- T={T} {attention} {mode}: 3 training steps")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25), flush=True)
        print("cudagraph counters:", {k: v for k, v in counters["inductor"].items() if "cudagraph" in k},
              flush=True)
    return loss0, train * 1e3, prefill * 1e3, skips


def report_cudagraph_decisions():
    from torch._inductor import output_code

    def wrap(name):
        real = getattr(output_code, name)

        def post_compile(example_inputs, compiled_graph, cudagraphs, *rest):
            info = compiled_graph.cudagraph_info
            print(f"[why] {name}: backward={compiled_graph.fx_kwargs.get('is_backward')} "
                  f"inference={compiled_graph.fx_kwargs.get('is_inference')} "
                  f"cudagraphs={bool(cudagraphs)} "
                  f"fail_reasons={info.cudagraph_fail_reasons if info else None} "
                  f"disabled_reason={compiled_graph.disabled_cudagraphs_reason!r} "
                  f"partitions={None if compiled_graph.partition_maps is None else len(compiled_graph.partition_maps)}",
                  flush=True)
            return real(example_inputs, compiled_graph, cudagraphs, *rest)

        setattr(output_code, name, post_compile)

    for name in ("cudagraph_post_compile", "cudagraph_partition_post_compile"):
        if hasattr(output_code, name):
            wrap(name)


def use_old_autograd_context():
    import importlib

    from host_autograd_ab import old_context  # this script's folder is on the path

    opdef = importlib.import_module("fsa_compile.op")._selected_attention
    opdef._setup_context_fn = old_context(opdef._setup_context_fn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="4096,8192,16384,32768")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", default="fsa,dense")
    ap.add_argument("--modes", default="default,reduce-overhead")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--old-autograd", action="store_true")
    ap.add_argument("--why", action="store_true")
    args = ap.parse_args()
    if args.why:
        report_cudagraph_decisions()
    if args.old_autograd:
        use_old_autograd_context()
    models = [m for m in (("fsa", "nsa", "fsa"), ("dense", "dense", "inductor")) if m[0] in args.models.split(",")]
    rows = []
    for T in (int(t) for t in args.T.split(",")):
        for name, attention, backend in models:
            for mode in args.modes.split(","):
                try:
                    r = run(T, attention, backend, mode, args.steps, args.profile)
                except Exception as e:  # noqa: BLE001
                    r = (float("nan"),) * 3 + (f"FAILED {type(e).__name__}: {str(e)[:150]}",)
                rows.append((T, name, mode) + r)
                print(rows[-1], flush=True)
    print(f"\n{'T':>6} {'model':<6} {'mode':<16}{'loss0':>9}{'train ms':>10}{'tok/s':>11}{'prefill ms':>11}  cudagraph skips")
    for T, name, mode, loss0, train, prefill, skips in rows:
        print(f"{T:>6} {name:<6} {mode:<16}{loss0:9.4f}{train:10.2f}{T / train * 1e3:11,.0f}{prefill:11.2f}  {skips}")


if __name__ == "__main__":
    main()
