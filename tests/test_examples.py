"""The examples run at a tiny size on the CPU path, and training under fsa follows eager."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def test_training_loss_curve_matches_eager(tmp_path):
    import train

    common = ["--tiny", "--steps", "8", "--T", "96", "--inner", "aot_eager"]
    eager = train.main(common + ["--backend", "eager"])
    fsa = train.main(common + ["--backend", "fsa", "--save", str(tmp_path / "ck.pt")])
    assert len(eager) == len(fsa) == 8
    assert max(abs(a - b) for a, b in zip(eager, fsa)) < 1e-4, (eager, fsa)
    resumed = train.main(["--tiny", "--steps", "2", "--T", "96", "--inner", "aot_eager", "--backend", "fsa",
                          "--resume", str(tmp_path / "ck.pt")])
    assert len(resumed) == 2 and all(torch.isfinite(torch.tensor(resumed)))


TRAIN_TINY = ["--tiny", "--steps", "3", "--T", "96", "--inner", "aot_eager", "--backend", "fsa"]


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


@pytest.mark.parametrize("B,T,window", [(2, 100, 32), (1, 256, 32), (3, 300, 64), (2, 20, 32)])
def test_model_sliding_branch_is_causal_window_attention(B, T, window):
    from nsa_model import NSAAttention, NSAConfig

    attn = NSAAttention(NSAConfig(dim=64, heads=4, kv_heads=2, head_dim=16, window=window))
    g = torch.Generator().manual_seed(T)
    q = torch.randn(B, T, 4, 16, generator=g)
    k, v = torch.randn(B, T, 2, 16, generator=g), torch.randn(B, T, 2, 16, generator=g)
    kk, vv = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
    t = torch.arange(T)
    near = (t.view(T, 1) >= t.view(1, T)) & (t.view(T, 1) - t.view(1, T) < window)
    s = torch.einsum("bthd,bshd->bhts", q, kk) * 16**-0.5
    want = torch.einsum("bhts,bshd->bthd", s.masked_fill(~near, float("-inf")).softmax(-1), vv)
    torch.testing.assert_close(attn.sliding(q, k, v), want, rtol=1e-5, atol=1e-5)


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


def test_e2e_bench_script_runs_on_a_tiny_cpu_model():
    from fsa_compile import bench_e2e

    assert bench_e2e.main(["--cpu-smoke"]) == 0
