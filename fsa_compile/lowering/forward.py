"""Forward launches (placeholder: the reference until the kernels land)."""
from ..reference import reference_forward


def forward(q, k, v, idx, block_size, scale, causal, plan):
    return reference_forward(q, k, v, idx, block_size, scale, causal)
