"""The compiled gather form end to end through the Triton kernels (interpreted on CPU)."""
import os
import sys

import pytest
import torch

import fsa_compile
from naive import random_selection

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from nsa_selected import selected_attention_gather  # noqa: E402

pytestmark = pytest.mark.interpret


@pytest.mark.parametrize("strategy", ["fsa", "nsa"])
def test_compiled_gather_form_runs_the_kernels(strategy):
    g = torch.Generator().manual_seed(5)
    B, T, H, G, D, bs, n = 1, 40, 2, 2, 16, 16, 3
    q = torch.randn(B, T, H * G, D, generator=g, requires_grad=True)
    k = torch.randn(B, T, H, D, generator=g, requires_grad=True)
    v = torch.randn(B, T, H, D, generator=g, requires_grad=True)
    idx = random_selection(B, T, H, n, bs, pad=0.3, generator=g)
    rep = fsa_compile.explain(selected_attention_gather, q, k, v, idx, bs,
                              options={"inner": "aot_eager", "strategy": strategy})
    assert len(rep.rewrites) == 1 and rep.rewrites[0].plan.startswith(strategy), str(rep)
    eager = selected_attention_gather(q, k, v, idx, bs)
    assert (rep.output - eager).abs().max() < 2e-4
    w = torch.randn(eager.shape, generator=g)
    for a, b in zip(torch.autograd.grad((rep.output * w).sum(), (q, k, v)),
                    torch.autograd.grad((eager * w).sum(), (q, k, v))):
        assert (a - b).abs().max() < 2e-4
