"""Train the NSA model (examples/nsa_model.py) on synthetic tokens under a chosen backend.

    python examples/train.py --backend fsa --steps 50 [--T 4096] [--save ckpt.pt] [--resume ckpt.pt] [--amp]
    python examples/train.py --backend fsa --mode reduce-overhead   # CUDA graphs: short T is host-bound
    torchrun --nproc-per-node 2 examples/train.py --backend fsa               # DDP, one process per GPU
    torchrun --nproc-per-node 2 examples/train.py --backend fsa --dist fsdp   # FSDP2 (fully_shard)

Under torchrun every rank draws the same global batch of ``--batch x world size`` sequences and
trains on its share, so N processes with ``--batch b`` follow one process with ``--batch N*b``
(the printed loss is the mean over ranks). Without CUDA the ranks talk through gloo on the CPU.

The loss of every step is recorded, but read from the GPU (which waits for it) only every
``--log-every`` steps, when the progress line is printed with the tokens/s of the steps since the
last line (and since step 1: the first step, which compiles, is left out of both).

The data is a synthetic copy task (random segments repeated later in the sequence), so the loss
falls as the model learns to look back: attention that drops keys would show in the curve. The
model file imports nothing of fsa_compile; with --backend fsa the rewrites are logged.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nsa_model import NSAConfig, NSAModel, num_params  # noqa: E402

BACKENDS = ("eager", "inductor", "fsa")


def synthetic_batch(B, T, vocab, generator, device):
    """Random tokens where every second segment of 64 repeats an earlier one."""
    seg = 64
    x = torch.randint(0, vocab, (B, T + 1), generator=generator)
    nseg = (T + 1) // seg
    for s in range(1, nseg, 2):
        src = int(torch.randint(0, s, (1,), generator=generator))
        x[:, s * seg:(s + 1) * seg] = x[:, src * seg:(src + 1) * seg]
    if device.type == "cuda":  # from pageable memory the copy would wait for the last step's kernels
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def config_for(args) -> NSAConfig:
    max_seq = max(args.T or 0, NSAConfig.max_seq)  # the rotary tables cover the sequence
    if args.tiny:
        return NSAConfig(dim=64, layers=2, heads=4, kv_heads=2, head_dim=16, block_size=16, n=4, window=32,
                         cmp_block=8, cmp_stride=4, max_seq=max_seq)
    return NSAConfig(dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                     head_dim=args.head_dim, max_seq=max_seq)


def compile_model(model, backend, inner="inductor", mode=None):
    if backend == "eager":
        return model
    if backend == "inductor":
        return torch.compile(model, mode=mode)
    if mode is not None:  # torch.compile takes a mode or options, not both; a mode is Inductor's
        return torch.compile(model, backend="fsa", mode=mode)
    return torch.compile(model, backend="fsa", options={"inner": inner})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=BACKENDS, default="fsa")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--T", type=int, default=None, help="sequence length (default 4096 on GPU, 256 on CPU)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="a tiny model (the CPU/CI size)")
    ap.add_argument("--inner", default="inductor", choices=["inductor", "aot_eager"],
                    help="what compiles the graph after the fsa rewrite")
    ap.add_argument("--amp", action="store_true",
                    help="mixed precision: float32 weights, the forward under torch.autocast to bf16")
    ap.add_argument("--mode", choices=["default", "reduce-overhead"], default="default",
                    help="torch.compile mode; reduce-overhead replays each step from CUDA graphs (short T, "
                         "where the host's launches set the pace)")
    ap.add_argument("--log-every", type=int, default=10,
                    help="read the loss (a wait for the GPU) and print progress every N steps")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                    help="auto: the GPU where there is one (bf16), else the CPU path (float32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="write a checkpoint here at the end")
    ap.add_argument("--resume", help="start from this checkpoint")
    ap.add_argument("--log-json", help="write the loss curve here")
    ap.add_argument("--dist", choices=["ddp", "fsdp"], default="ddp",
                    help="under torchrun: DistributedDataParallel or FSDP2 (fully_shard)")
    args = ap.parse_args(argv)
    if args.log_every < 1:
        ap.error("--log-every must be at least 1")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: this machine has no CUDA device")
    if cuda and distributed and world > torch.cuda.device_count():
        ap.error(f"{world} ranks need {world} GPUs, this machine has {torch.cuda.device_count()} "
                 "(--device cpu trains on the CPU, over gloo)")
    rank = 0
    if distributed:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        rank = torch.distributed.get_rank()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device, dtype = torch.device("cuda", local), torch.bfloat16
    else:
        device, dtype = torch.device("cpu"), torch.float32
    if args.amp:
        dtype = torch.float32
    T = args.T or (4096 if device.type == "cuda" else 256)
    if args.backend == "fsa" and rank == 0:
        logging.basicConfig(format="%(message)s")
        logging.getLogger("fsa_compile").setLevel(logging.INFO)

    torch.manual_seed(args.seed)
    cfg = config_for(args)
    model = NSAModel(cfg).to(device=device, dtype=dtype)
    fsdp = distributed and args.dist == "fsdp"
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start = 0
    if args.resume:
        ckpt = torch.load(args.resume, map_location=device)
        _load_state(model, opt, ckpt, fsdp)
        start = ckpt["step"]
    train_model = model
    if distributed and not fsdp:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mode = None if args.mode == "default" else args.mode
    if mode is not None and (args.backend == "eager" or args.inner != "inductor"):
        ap.error("--mode needs a compiling backend (inductor or fsa) with --inner inductor")
    compiled = compile_model(train_model, args.backend, args.inner, mode)
    if rank == 0:
        how = f", {world} processes ({args.dist}, batch {args.batch} each)" if distributed else ""
        print(f"{num_params(model) / 1e6:.1f}M parameters, T={T}, batch {args.batch * world}{how}, {device}, {dtype}"
              f"{' (autocast to bf16)' if args.amp else ''}, "
              f"backend {args.backend}" + (f", mode {mode}" if mode else ""), flush=True)

    # one generator per step, seeded by the step: a resumed run draws the batches that the
    # uninterrupted run would have drawn
    def batch_gen(step):
        return torch.Generator().manual_seed(args.seed * 1_000_003 + step)

    losses = []
    unread = []  # this stretch's losses, still on the device: reading one waits for the GPU
    t_start = time.perf_counter()
    t_warm, first, now = None, None, t_start  # the first step compiles: the rate counts the steps after it
    tokens_done = 0
    mark = last = None  # (time, tokens) at the last progress line; the rate over the stretch since
    for step in range(start, start + args.steps):
        batch = synthetic_batch(args.batch * world, T, cfg.vocab, batch_gen(step), device)[rank * args.batch:(rank + 1) * args.batch]
        if mode == "reduce-overhead":  # a new step: the last one's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = compiled(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg.vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        shown = loss.detach()
        if distributed:
            torch.distributed.all_reduce(shown, op=torch.distributed.ReduceOp.AVG if device.type == "cuda" else torch.distributed.ReduceOp.SUM)
            if device.type != "cuda":  # gloo has no AVG
                shown = shown / world
        unread.append(shown)
        done = step - start + 1
        if t_warm is not None and done % args.log_every and done != args.steps:
            continue  # let the host run ahead of the GPU
        losses.extend(x.item() for x in unread)
        unread.clear()
        now = time.perf_counter()
        if t_warm is None:
            t_warm, first = now, now - t_start
        tokens_done = (done - 1) * args.batch * T
        if mark is not None and tokens_done > mark[1]:
            last = (tokens_done - mark[1]) / (now - mark[0])
        mark = (now, tokens_done)
        if rank == 0:
            bar = "#" * (20 * done // args.steps)
            per = " per process" if distributed else ""
            # the last stretch's rate: the early steps also warm up (CUDA graphs record there)
            rate = (f"{last:,.0f} tok/s{per} (since step 1: {tokens_done / (now - t_warm):,.0f})" if last
                    else "tok/s from the next step")
            print(f"\rstep {step + 1:4d} [{bar:<20}] loss {losses[-1]:.4f}  first step (compile) {first:.1f} s, {rate}",
                  end="", flush=True)
    state = _full_state(model, opt, fsdp) if args.save else None  # every rank takes part in the gather
    if rank == 0:
        print()
        if args.save:
            torch.save({**state, "step": start + args.steps, "config": vars(cfg)}, args.save)
            print(f"saved {args.save}")
        if args.log_json:
            with open(args.log_json, "w") as f:
                json.dump({"backend": args.backend, "T": T, "world": world, "dist": args.dist if distributed else None,
                           "amp": args.amp, "first_step_s": first,
                           "tok_s": tokens_done / (now - t_warm) if tokens_done else None, "tok_s_last": last,
                           "losses": losses}, f)
    if distributed:
        torch.distributed.destroy_process_group()
    return losses


def _full_state(model, opt, fsdp):
    """Model and optimizer state as plain tensors (FSDP2 shards are gathered), for torch.save."""
    if not fsdp:
        return {"model": model.state_dict(), "opt": opt.state_dict()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"model": get_model_state_dict(model, options=o), "opt": get_optimizer_state_dict(model, opt, options=o)}


def _load_state(model, opt, ckpt, fsdp):
    if not fsdp:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    o = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt["model"], options=o)
    set_optimizer_state_dict(model, opt, ckpt["opt"], options=o)


if __name__ == "__main__":
    main()
