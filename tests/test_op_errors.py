"""Bad input gets a clear error naming the argument and the shapes."""
import pytest
import torch

import fsa_compile


def _ok(B=1, T=16, H=2, G=2, D=8, n=2):
    q = torch.randn(B, T, H * G, D)
    k = torch.randn(B, T, H, D)
    v = torch.randn(B, T, H, D)
    idx = torch.zeros(B, T, H, n, dtype=torch.long)
    return q, k, v, idx


def test_valid_call_works():
    q, k, v, idx = _ok()
    assert fsa_compile.selected_attention(q, k, v, idx, 8).shape == q.shape


@pytest.mark.parametrize(
    "mutate, exc, text",
    [
        (lambda a: a.update(k=torch.randn(1, 16, 3, 8), v=torch.randn(1, 16, 3, 8)), ValueError, "multiple of key/value heads"),
        (lambda a: a.update(k=torch.randn(1, 16, 2, 16), v=torch.randn(1, 16, 2, 16)), ValueError, "head dim"),
        (lambda a: a.update(v=torch.randn(1, 16, 2, 4)), ValueError, "same shape"),
        (lambda a: a.update(k=torch.randn(1, 15, 2, 8), v=torch.randn(1, 15, 2, 8)), ValueError, "has more query rows than k"),
        (lambda a: a.update(k=torch.randn(2, 16, 2, 8), v=torch.randn(2, 16, 2, 8)), ValueError, "batch size"),
        (lambda a: a.update(k=torch.randn(1, 40, 2, 8), v=torch.randn(1, 40, 2, 8), idx=torch.full((1, 16, 2, 2), 5)),
         ValueError, "with 40 keys and block_size=8 there are 5 blocks"),
        (lambda a: a.update(idx=torch.zeros(1, 16, 2, 2)), TypeError, "integer dtype"),
        (lambda a: a.update(idx=torch.zeros(1, 16, 2, 2, dtype=torch.bool)), TypeError, "integer dtype"),
        (lambda a: a.update(idx=torch.zeros(1, 16, 3, 2, dtype=torch.long)), ValueError, "block_indices must be"),
        (lambda a: a.update(idx=torch.zeros(16, 2, 2, dtype=torch.long)), ValueError, "block_indices must be"),
        (lambda a: a.update(idx=torch.full((1, 16, 2, 2), 2)), ValueError, "out of range"),
        (lambda a: a.update(q=torch.randn(1, 16, 4)), ValueError, "q must have 4 dims"),
        (lambda a: a.update(q=torch.randn(1, 16, 4, 8).double()), TypeError, "float16, bfloat16 or float32"),
        (lambda a: a.update(k=torch.randn(1, 16, 2, 8).half()), TypeError, "share a dtype"),
        (lambda a: a.update(q="q"), TypeError, "q must be a torch.Tensor"),
        (lambda a: a.update(q=torch.randn(1, 16, 4, 264), k=torch.randn(1, 16, 2, 264), v=torch.randn(1, 16, 2, 264)), ValueError, "exceeds the supported maximum of 256"),
        (lambda a: a.update(idx=torch.zeros(1, 16, 2, 2, dtype=torch.long, device="meta")), ValueError, "one device"),
    ],
)
def test_bad_inputs(mutate, exc, text):
    q, k, v, idx = _ok()
    args = dict(q=q, k=k, v=v, idx=idx)
    mutate(args)
    with pytest.raises(exc, match=text):
        fsa_compile.selected_attention(args["q"], args["k"], args["v"], args["idx"], 8)


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(block_size=0), ValueError, "block_size must be positive"),
        (dict(block_size=8.0), TypeError, "block_size must be an int"),
        (dict(layout="btdh"), ValueError, "layout must be one of"),
        (dict(strategy="fast"), ValueError, "strategy must be one of"),
        (dict(on_out_of_range="ignore"), ValueError, "on_out_of_range must be one of"),
        (dict(scale="0.1"), TypeError, "scale must be a float"),
        (dict(q_offset=-1), ValueError, r"need 0 <= q_offset <= T_k - T_q = 0"),
        (dict(q_offset=1), ValueError, r"positions 1..16, outside the 16 keys"),
        (dict(q_offset=1.0), TypeError, "q_offset must be an int or None"),
        (dict(q_offset=True), TypeError, "q_offset must be an int or None"),
    ],
)
def test_bad_options(kwargs, exc, text):
    q, k, v, idx = _ok()
    kw = dict(block_size=8)
    kw.update(kwargs)
    bs = kw.pop("block_size")
    with pytest.raises(exc, match=text):
        fsa_compile.selected_attention(q, k, v, idx, bs, **kw)


def test_head_dim_256_is_accepted():
    q, k, v, idx = _ok(D=256)
    assert fsa_compile.selected_attention(q, k, v, idx, 8).shape == q.shape
