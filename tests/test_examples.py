"""The examples run at a tiny size on the CPU path, and training under fsa follows eager.

The training tests pass ``--device cpu``: on a machine with CUDA, train.py would otherwise train
in bf16 on the GPU, which the float32 tolerances here are not for, and torchrun's two ranks would
need two GPUs."""
import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def test_training_loss_curve_matches_eager(tmp_path):
    import train

    common = ["--tiny", "--T", "96", "--inner", "aot_eager", "--device", "cpu"]
    eager = train.main(common + ["--steps", "10", "--backend", "eager"])
    fsa = train.main(common + ["--steps", "8", "--backend", "fsa", "--save", str(tmp_path / "ck.pt")])
    assert len(eager) == 10 and len(fsa) == 8
    assert max(abs(a - b) for a, b in zip(eager, fsa)) < 1e-4, (eager, fsa)
    # a resumed run continues the uninterrupted one: same batches, weights and optimizer state
    resumed = train.main(common + ["--steps", "2", "--backend", "fsa", "--resume", str(tmp_path / "ck.pt")])
    assert max(abs(a - b) for a, b in zip(resumed, eager[8:])) < 1e-4, (resumed, eager[8:])


def test_mixed_precision_training_runs_the_op_in_bf16_and_follows_eager():
    """``--amp``: float32 weights, the forward under autocast to bf16; the attention's products then
    read bf16, so does the op, and the loss follows eager's to bf16 noise."""
    import train
    from fsa_compile.testing import RewriteCounter

    common = ["--tiny", "--T", "96", "--inner", "aot_eager", "--amp", "--steps", "5"]
    eager = train.main(common + ["--backend", "eager"])
    with RewriteCounter() as counter:
        fsa = train.main(common + ["--backend", "fsa"])
    assert counter.rewrites and {r.options["dtype"] for r in counter.rewrites} == {"bfloat16"}, counter.rewrites
    assert max(abs(a - b) for a, b in zip(eager, fsa)) < 0.05, (eager, fsa)


def test_train_mode_needs_inductor():
    """``--mode`` is a torch.compile mode, which Inductor implements: asked of eager, or with another
    inner compiler, the example says so instead of failing inside torch.compile."""
    import train

    for flags in (["--backend", "eager"], ["--backend", "fsa", "--inner", "aot_eager"]):
        with pytest.raises(SystemExit):
            train.main(["--tiny", "--steps", "1", "--mode", "reduce-overhead", *flags])


def test_train_says_what_its_device_cannot_do(monkeypatch):
    """``--device cuda`` without CUDA, or more torchrun ranks than GPUs: a clear error, not a
    failure inside torch.cuda."""
    import train

    if torch.cuda.is_available():
        monkeypatch.setenv("WORLD_SIZE", str(torch.cuda.device_count() + 1))
    with pytest.raises(SystemExit):
        train.main(["--tiny", "--steps", "1", "--device", "cuda"])


TRAIN_TINY = ["--tiny", "--steps", "3", "--T", "96", "--inner", "aot_eager", "--backend", "fsa", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_process_batch_2():
    """The loss curve the distributed runs must follow (trained once for both)."""
    import train

    return train.main(TRAIN_TINY + ["--batch", "2"])


@pytest.mark.parametrize("dist", ["ddp", "fsdp"])
def test_two_processes_follow_one_process(dist, tmp_path, one_process_batch_2):
    """Under torchrun (gloo on the CPU) with DDP or FSDP2, two ranks of batch 1 train like one
    process of batch 2, the attention rewritten in each rank."""
    import json
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "train.py")
    common = TRAIN_TINY
    one = one_process_batch_2
    log = tmp_path / "two.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script, *common,
         "--batch", "1", "--dist", dist, "--log-json", str(log), "--save", str(tmp_path / "ck.pt")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rewrote softmax-attention" in run.stdout + run.stderr
    two = json.loads(log.read_text())
    assert two["world"] == 2 and two["dist"] == dist
    assert max(abs(a - b) for a, b in zip(one, two["losses"])) < 1e-4, (one, two["losses"])
    assert (tmp_path / "ck.pt").exists()


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 300), window=st.sampled_from([8, 32, 64]),
       win_chunk=st.sampled_from([1, 7, 32, 256]), win_chunk_no_grad=st.sampled_from([1, 5, 128]))
def test_model_sliding_branch_is_causal_window_attention(B, T, window, win_chunk, win_chunk_no_grad):
    from nsa_model import NSAAttention, NSAConfig

    attn = NSAAttention(NSAConfig(dim=64, heads=4, kv_heads=2, head_dim=16, window=window, win_chunk=win_chunk,
                                  win_chunk_no_grad=win_chunk_no_grad))
    g = torch.Generator().manual_seed(T)
    q = torch.randn(B, T, 4, 16, generator=g, requires_grad=True)
    k = torch.randn(B, T, 2, 16, generator=g, requires_grad=True)
    v = torch.randn(B, T, 2, 16, generator=g, requires_grad=True)
    kk, vv = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
    t = torch.arange(T)
    near = (t.view(T, 1) >= t.view(1, T)) & (t.view(T, 1) - t.view(1, T) < window)
    s = torch.einsum("bthd,bshd->bhts", q, kk) * 16**-0.5
    want = torch.einsum("bhts,bshd->bthd", s.masked_fill(~near, float("-inf")).softmax(-1), vv)
    with torch.no_grad():  # the prefill's chunking
        torch.testing.assert_close(attn.sliding(q, k, v), want, rtol=1e-5, atol=1e-5)
    got = attn.sliding(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    go = torch.randn(got.shape, generator=g)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), go), torch.autograd.grad(want, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_model_sliding_branch_hands_sdpa_keys_that_do_not_overlap_when_training(monkeypatch):
    """With gradients, the sliding branch's key/value windows reach SDPA (which saves them for the
    backward) as tensors whose elements do not overlap in memory: saved overlapping windows keep
    torch 2.11's CUDA graphs off the whole backward. Without gradients the view is kept."""
    import nsa_model
    from nsa_model import NSAAttention, NSAConfig

    seen = []
    real = nsa_model.F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(max(torch._debug_has_internal_overlap(k), torch._debug_has_internal_overlap(v)))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(nsa_model.F, "scaled_dot_product_attention", spy)
    attn = NSAAttention(NSAConfig(dim=64, heads=4, kv_heads=2, head_dim=16, window=32, win_chunk=16,
                                  win_chunk_no_grad=16))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 100, h, 16, generator=g, requires_grad=True) for h in (4, 2, 2))
    attn.sliding(q, k, v)
    assert seen == [0, 0]  # the first window's causal call, then the chunked one: no overlap
    seen.clear()
    with torch.no_grad():
        attn.sliding(q, k, v)
    assert seen[0] == 0 and seen[1] != 0  # the prefill keeps the overlapping windows as a view


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 300),
       blocks=st.sampled_from([(8, 4), (32, 16), (4, 4), (3, 4), (6, 4), (9, 2), (5, 3), (1, 1)]))
def test_model_compressed_branch_is_block_causal_attention(B, T, blocks):
    """Query t attends to the null key and to every summary whose block ends at or before t, and
    to nothing else, with the same gradients as that masked softmax (blocks shorter than, equal to
    and longer than the stride move where the model's first query group starts)."""
    from nsa_model import NSAAttention, NSAConfig

    cmp_block, cmp_stride = blocks
    cfg = NSAConfig(dim=64, heads=4, kv_heads=2, head_dim=16, cmp_block=cmp_block, cmp_stride=cmp_stride)
    attn = NSAAttention(cfg)
    g = torch.Generator().manual_seed(T * 7 + cmp_block)
    with torch.no_grad():  # non-zero null key/value and positions, so they matter
        attn.null_kv.copy_(torch.randn(attn.null_kv.shape, generator=g))
        attn.cmp_pos.copy_(torch.randn(attn.cmp_pos.shape, generator=g))
    q = torch.randn(B, T, 4, 16, generator=g, requires_grad=True)
    k = torch.randn(B, T, 2, 16, generator=g, requires_grad=True)
    v = torch.randn(B, T, 2, 16, generator=g, requires_grad=True)
    starts = list(range(0, T - cfg.cmp_block + 1, cfg.cmp_stride))
    summ_k = [attn.null_kv[0].expand(B, 2, 16)] + [
        attn.cmp_k((k[:, s0:s0 + cfg.cmp_block].transpose(1, 2) + attn.cmp_pos).flatten(-2)) for s0 in starts]
    summ_v = [attn.null_kv[1].expand(B, 2, 16)] + [
        attn.cmp_v((v[:, s0:s0 + cfg.cmp_block].transpose(1, 2) + attn.cmp_pos).flatten(-2)) for s0 in starts]
    kk = torch.stack(summ_k, 1).repeat_interleave(2, 2)  # [B, 1 + Tc, HQ, D]
    vv = torch.stack(summ_v, 1).repeat_interleave(2, 2)
    last = torch.tensor([-1] + [s0 + cfg.cmp_block - 1 for s0 in starts])  # the null key: always
    seen = last.view(1, -1) <= torch.arange(T).view(T, 1)
    s = torch.einsum("bthd,bshd->bhts", q, kk) * 16**-0.5
    want = torch.einsum("bhts,bshd->bthd", s.masked_fill(~seen, float("-inf")).softmax(-1), vv)
    got = attn.compressed(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    go = torch.randn(got.shape, generator=g)
    wrt = [q, k, v, attn.null_kv, attn.cmp_pos, attn.cmp_k.weight, attn.cmp_v.weight]
    for a, b in zip(torch.autograd.grad(got, wrt, go, allow_unused=True),
                    torch.autograd.grad(want, wrt, go, allow_unused=True)):
        if a is None or b is None:  # no summaries (T < cmp_block): the maps get no gradient
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_prefill_runs_and_agrees():
    import prefill

    res = prefill.main(["--tiny", "--T", "80", "--backends", "eager,fsa", "--reps", "1"])
    assert set(res) == {"eager", "fsa"} and all(v is not None and v > 0 for v in res.values())


def test_demo_main_job_passes(monkeypatch):
    import demo

    monkeypatch.setattr(sys, "argv", ["demo.py", "--T", "96", "--inner", "aot_eager", "--reps", "1"])
    assert demo.main() == 0


def test_e2e_bench_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    from fsa_compile import bench_e2e

    assert bench_e2e.main(["--T", "1024"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_e2e_bench_rejects_an_unknown_backend(capsys):
    from fsa_compile import bench_e2e

    with pytest.raises(SystemExit) as e:
        bench_e2e.main(["--backends", "fsa,flash"])
    assert e.value.code == 2 and "eager, inductor, fsa, dense" in capsys.readouterr().err


def test_e2e_bench_script_runs_on_a_tiny_cpu_model(capsys, tmp_path):
    import json

    from fsa_compile import bench_e2e

    out = tmp_path / "e2e.json"
    assert bench_e2e.main(["--cpu-smoke", "--json", str(out)]) == 0
    fsa = [r for r in json.loads(out.read_text())["results"] if r["backend"] == "fsa"]
    assert fsa and all(0 < r["pass_s"] <= r["compile_s"] + 0.05 for r in fsa), fsa
    assert "pattern pass" in capsys.readouterr().out


@settings(max_examples=10, deadline=None)
@given(t=st.integers(0, 70000), s=st.integers(0, 70000), shift=st.integers(0, 60000), seed=st.integers(0, 2**16))
def test_rotary_scores_depend_on_the_distance_only(t, s, shift, seed):
    """The table-driven rotary embedding rotates q at position t and k at position s so that their
    dot product depends on t - s alone (and keeps norms); positions beyond 64K included."""
    from nsa_model import rope, rope_tables

    D = 64
    cos, sin = rope_tables(max(t, s) + shift + 1, D)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, D, generator=g, dtype=torch.float64).unbind(0)

    def at(x, pos):  # x placed at position pos of a [1, pos + 1, 1, D] sequence, rotated there
        seq = torch.zeros(1, pos + 1, 1, D, dtype=torch.float64)
        seq[0, pos, 0] = x
        return rope(seq, cos.double(), sin.double()).float()[0, pos, 0].double()

    dot = at(q, t) @ at(k, s)
    assert torch.allclose(dot, at(q, t + shift) @ at(k, s + shift), rtol=1e-4, atol=1e-4)
    assert torch.allclose(at(q, t).norm(), q.norm(), rtol=1e-5)
    if t == s:
        assert torch.allclose(dot, q @ k, rtol=1e-4, atol=1e-4)


def test_model_says_when_a_sequence_outruns_its_rotary_tables():
    from nsa_model import NSAConfig, NSAModel

    m = NSAModel(NSAConfig(dim=32, layers=1, heads=2, kv_heads=1, head_dim=16, block_size=8, n=2, window=8,
                           cmp_block=8, cmp_stride=4, max_seq=40))
    assert m(torch.zeros(1, 40, dtype=torch.long)).shape == (1, 40, m.c.vocab)
    with pytest.raises(ValueError, match="max_seq=40"):
        m(torch.zeros(1, 41, dtype=torch.long))


def test_examples_size_the_rotary_tables_for_their_sequence():
    import argparse

    import train
    from nsa_model import NSAConfig

    long = NSAConfig.max_seq + 4096
    args = argparse.Namespace(tiny=True, T=long, dim=64, layers=1, heads=4, kv_heads=2, head_dim=16)
    assert train.config_for(args).max_seq == long
    assert train.config_for(argparse.Namespace(**{**vars(args), "T": None})).max_seq == NSAConfig.max_seq

    import nsa_model
    from fsa_compile.bench_e2e import _model

    cfg, _, _ = _model(nsa_model, "eager", dict(dim=32, layers=1, heads=2, kv_heads=1, head_dim=8), "cpu",
                       torch.float32, 2 * NSAConfig.max_seq)
    assert cfg.max_seq == 2 * NSAConfig.max_seq
