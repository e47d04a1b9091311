"""Near misses: code shaped like selected attention that is NOT the contract is left alone, and
``explain(...).misses`` says which check failed."""
import pytest
import torch

import fsa_compile
from fsa_compile.testing import Shape, make_inputs

FAST = {"inner": "aot_eager"}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles the shared forms afresh (Dynamo's per-function recompile limit)."""
    torch._dynamo.reset()
    yield
NEG_INF = float("-inf")


def variant(q, k, v, block_indices, block_size, *, change=None):
    """The gather form with one thing changed (``change`` names it); None is the contract."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    idx = block_indices
    if change == "clamp_block_indices":
        idx = idx.clamp(max=(T + block_size - 1) // block_size - 1)  # out of range -> the last block
    offs = torch.arange(block_size)
    tok = (idx.unsqueeze(-1) * block_size + offs).flatten(-2)
    pad = ((idx == -1) if change == "padding_is_minus_one" else (idx < 0)).unsqueeze(-1).expand(
        *idx.shape, block_size).flatten(-2)
    t_pos = torch.arange(T).view(1, T, 1, 1)
    future = tok > t_pos
    if change == "sliding_window":
        future = future | (tok <= t_pos - 2 * block_size)
    if change == "strictly_causal":
        future = tok >= t_pos
    masked = future if change == "unmasked_padding" else pad | future
    safe = tok.clamp(0, T - 1)
    if change == "float_indices":
        safe = safe.long()
    b_idx = torch.arange(B).view(B, 1, 1, 1)
    h_idx = torch.arange(H).view(1, 1, H, 1)
    if change == "permuted_head_dim":
        d = torch.arange(D)
        k = k[..., torch.where((d == 1) | (d == 2), 3 - d, d)]  # two inner head-dim columns swapped
    if change == "value_updated_in_place":
        v = v.clone()
        v.add_(1.0)
    k_sel = k[b_idx, safe, h_idx].repeat_interleave(G, dim=2)
    if change in ("mask_grouped_other_way", "values_grouped_other_way"):  # hq = g * H + h for the keys
        k_sel = k[b_idx, safe, h_idx].repeat(1, 1, G, 1, 1)
    if change == "gathered_keys_times_data":  # other keys than k's, at the gathered positions
        k_sel = k_sel * (torch.sigmoid(q[..., :1]) + 0.5).unsqueeze(-1)
    v_safe = (safe + 1).clamp(max=T - 1) if change == "values_shifted" else safe
    v_sel = v[b_idx, v_safe, h_idx].repeat_interleave(G, dim=2)
    if change == "mask_grouped_other_way":
        v_sel = v[b_idx, v_safe, h_idx].repeat(1, 1, G, 1, 1)
    s = torch.einsum("bthd,bthsd->bths", q, k_sel)
    if change == "scale_in_place":
        s.div_(D**0.5)  # an update the pass does not follow: the scale must not be lost
    else:
        s = s * D**-0.5
    if change == "extra_op_in_scores":
        s = torch.tanh(s)  # a soft cap between the product and the softmax
    if change == "per_head_scale":
        s = s * torch.linspace(0.5, 1.0, HQ).view(1, 1, HQ, 1)
    # arithmetic with data (read as data where it makes q or k) on the attention itself
    if change == "scores_times_data":  # a temperature per query from the data
        s = s * (torch.sigmoid(q[..., :1]) + 0.5)
    if change == "scores_plus_data":  # a bias per key from the data
        s = s + torch.sigmoid(k_sel[..., 0])
    fill = -1e4 if change == "finite_fill" else NEG_INF
    s = s.masked_fill(masked.repeat_interleave(G, dim=2), fill)
    if change == "attention_sink":  # a zero logit in every row, dropped after the softmax
        p = torch.softmax(torch.nn.functional.pad(s, (0, 1)), dim=-1)[..., :-1]
    else:
        p = torch.softmax(s, dim=-1)
    if change == "scaled_probabilities":
        p = p * 0.5
    if change == "probabilities_times_data":  # a gate between the softmax and the product
        p = p * (torch.sigmoid(q[..., :1]) + 0.5)
    if change == "extra_op_after_softmax":
        p = p * 0.9 + 0.1 / p.shape[-1]  # smoothing between the softmax and the product
    return torch.einsum("bths,bthsd->bthd", p, v_sel)


MISSES = {
    "sliding_window": "not the causal (or full) keys of its selected blocks",
    "strictly_causal": "not the causal (or full) keys of its selected blocks",
    "unmasked_padding": "padding) block indices are not masked out",
    "finite_fill": "not -inf",
    "values_shifted": "values are not read at the same positions as the keys",
    "extra_op_in_scores": "the scores pass through tanh",
    "per_head_scale": "cannot follow the subgraph",
    "extra_op_after_softmax": "cannot follow the subgraph",
    "clamp_block_indices": "neither rejected nor dropped",
    "float_indices": "give block indices an integer dtype",
    # found by an adversarial review (2026-12-01): each was rewritten and computed something else
    "scaled_probabilities": "probabilities are multiplied by 0.5 before the output product",
    "attention_sink": "of the softmax row's",
    "padding_is_minus_one": "padding) block indices are not masked out",
    "value_updated_in_place": "after the in-place update",
    "scale_in_place": "after the in-place update",
    "permuted_head_dim": "does not pair a query with keys",
    # arithmetic of plain data is read as data (a RoPE, a QK-norm), but not on the attention itself
    "scores_times_data": "cannot follow the subgraph",
    "scores_plus_data": "cannot follow the subgraph",
    "probabilities_times_data": "cannot follow the subgraph",
    "gathered_keys_times_data": "could not read q, k, v",
    # GQA groups of one grouping (g-major, ``repeat``) for the keys, of the other for the rest
    "mask_grouped_other_way": "not the causal (or full) keys of its selected blocks",
    "values_grouped_other_way": "values are not read at the same positions as the keys",
}


def _case(seed=0):
    return make_inputs(Shape(1, 40, 2, 2, 8, 8, 3), "padding", seed)


def _explain(fn, *args):
    torch._dynamo.reset()  # the variants share one code object: keep Dynamo's recompile limit away
    rep = fsa_compile.explain(fn, *args, options=FAST)
    assert rep.rewrites == [], str(rep)
    eager = fn(*args)
    torch.testing.assert_close(rep.output, eager, equal_nan=True, rtol=0, atol=0)
    return rep


def test_the_unchanged_variant_is_rewritten():
    q, k, v, idx, bs = _case()
    rep = fsa_compile.explain(variant, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1, str(rep)


@pytest.mark.parametrize("change", sorted(MISSES))
def test_near_miss_reason(change):
    q, k, v, idx, bs = _case()
    if change == "float_indices":
        idx = idx.float()
    rep = _explain(lambda *a: variant(*a, change=change), q, k, v, idx, bs)
    assert len(rep.misses) == 1, str(rep)
    assert MISSES[change] in rep.misses[0].reason, str(rep)


def test_dense_mask_with_a_sliding_window_is_a_near_miss():
    from fsa_compile.patterns import forms

    def windowed(q, k, v, block_indices, block_size):
        B, T, HQ, D = q.shape
        blocks = forms._block_mask_scatter(block_indices, T, block_size)  # [B, T, H, nb]
        pos = torch.arange(T)
        near = (pos.view(T, 1) - pos.view(1, T)).abs() < 2 * block_size
        allowed = blocks[..., pos // block_size] & (pos.view(1, T, 1, 1) >= pos.view(1, 1, 1, T)) & near.view(1, T, 1, T)
        s = torch.einsum("bthd,bshd->bths", q, k) * D**-0.5
        s = s.masked_fill(~allowed, NEG_INF)
        return torch.einsum("bths,bshd->bthd", s.softmax(-1), v)

    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 1, 8, 8, 3), "padding", 0)
    rep = _explain(windowed, q, k, v, idx, bs)
    assert len(rep.misses) == 1 and "not the causal (or full) keys" in rep.misses[0].reason, str(rep)


def test_sdpa_with_dropout_is_a_near_miss():
    from fsa_compile.patterns import forms

    def with_dropout(q, k, v, block_indices, block_size):
        B, H, T, D = q.shape
        blocks = forms._block_mask_scatter(block_indices, T, block_size)
        allowed = blocks.repeat_interleave(block_size, dim=-1)[..., :T] & torch.ones(T, T, dtype=torch.bool).tril()
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=0.5)

    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 1, 8, 8, 3), "padding", 0)
    q, k, v, idx = (t.transpose(1, 2) for t in (q, k, v, idx))
    torch._dynamo.reset()
    rep = fsa_compile.explain(with_dropout, q, k, v, idx, bs, options=FAST)
    assert rep.rewrites == [] and len(rep.misses) == 1 and "dropout" in rep.misses[0].reason, str(rep)


def test_attention_with_an_unrelated_mask_is_left_alone_silently():
    def masked_attention(q, k, v, mask):
        s = torch.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
        return torch.einsum("bhts,bshd->bthd", s.masked_fill(~mask, NEG_INF).softmax(-1), v)

    q, k, v, _, _ = make_inputs(Shape(1, 16, 2, 1, 8, 4, 2), "unique", 0)
    mask = torch.rand(1, 2, 16, 16) < 0.7
    rep = _explain(masked_attention, q, k, v, mask)
    assert rep.misses == []


def _gather(q, k, v, block_indices, padding, block_size, clamp_past_end=True):
    """The gather form on ``[B, T, H, D]`` q, k, v: keys from ``block_indices``, padding masked
    where ``padding`` is negative (the same tensor in selected attention)."""
    from fsa_compile.patterns.forms import _token_indices

    T, D = q.shape[1], q.shape[-1]
    tok, _ = _token_indices(block_indices, block_size)
    _, pad = _token_indices(padding, block_size)
    masked = pad | (tok > torch.arange(T).view(1, T, 1, 1))
    safe = tok.clamp(0, T - 1) if clamp_past_end else tok.clamp(min=0)
    b = torch.arange(q.shape[0]).view(-1, 1, 1, 1)
    h = torch.arange(k.shape[2]).view(1, 1, -1, 1)
    s = torch.einsum("bthd,bthsd->bths", q, k[b, safe, h]) * D**-0.5
    return torch.einsum("bths,bthsd->bthd", s.masked_fill(masked, NEG_INF).softmax(-1), v[b, safe, h])


def test_two_selection_tensors_are_a_near_miss():
    def two_selections(q, k, v, block_indices, padding, block_size):
        return _gather(q, k, v, block_indices, padding, block_size)

    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 1, 8, 8, 3), "padding", 0)
    rep = _explain(two_selections, q, k, v, idx, idx.clone(), bs)
    assert len(rep.misses) == 1 and "more than one integer tensor feeds the attention" in rep.misses[0].reason, str(rep)


def test_code_that_fails_on_valid_indices_is_a_near_miss():
    """Keys of a short last block read past the end (no upper clamp): eager fails once a query
    selects that block; on this example nobody does, so eager runs, and the pass says why not."""
    def no_upper_clamp(q, k, v, block_indices, block_size):
        return _gather(q, k, v, block_indices, block_indices, block_size, clamp_past_end=False)

    q, k, v, idx, bs = make_inputs(Shape(1, 37, 2, 1, 8, 8, 3), "padding", 0)
    idx = idx.clamp(max=3)  # block 4 (keys 32..39 of 37) is never selected in the example
    rep = _explain(no_upper_clamp, q, k, v, idx, bs)
    assert len(rep.misses) == 1 and "fails (index out of range) on valid block indices" in rep.misses[0].reason, str(rep)


def test_an_unreadable_layout_is_a_near_miss():
    """q, k, v stored head dim before heads (``[B, T, D, H]``): no layout reads them."""
    def head_dim_first(q, k, v, block_indices, block_size):
        return _gather(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), block_indices, block_indices, block_size)

    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 1, 8, 8, 3), "padding", 0)
    q, k, v = (t.transpose(2, 3).contiguous() for t in (q, k, v))
    rep = _explain(head_dim_first, q, k, v, idx, bs)
    assert len(rep.misses) == 1 and "could not read q, k, v and the output" in rep.misses[0].reason, str(rep)


def test_clamping_is_caught_where_only_the_last_query_sees_the_last_block():
    """T = 5, block 4: the clamped-to block (keys 4..4) is visible to query 4 alone; the out-of-range
    probe puts an entry in every row, so the sampled rows meet one (this was rewritten as 'drop')."""
    q, k, v, idx, bs = make_inputs(Shape(1, 5, 1, 3, 12, 4, 3), "padding", 3)
    rep = _explain(lambda *a: variant(*a, change="clamp_block_indices"), q, k, v, idx, bs)
    assert len(rep.misses) == 1 and MISSES["clamp_block_indices"] in rep.misses[0].reason, str(rep)


def mask_variant(q, k, v, block_indices, block_size, *, change=None):
    """The compare-and-reduce block mask (``forms.mask_compare_any``) with one thing changed."""
    B, T, HQ, D = q.shape
    nb = (T + block_size - 1) // block_size
    blocks = torch.arange(nb) + (1 if change == "block_numbers_shifted" else 0)
    hits = block_indices.unsqueeze(-2) == blocks.unsqueeze(-1)  # [B, T, H, nb, n]
    if change == "all_slots":
        selected = hits.all(dim=-1)
    elif change == "selected_twice":
        selected = hits.sum(dim=-1) > 1
    elif change == "one_hot_of_padding":  # F.one_hot fails on a negative entry
        selected = torch.nn.functional.one_hot(block_indices, nb).sum(dim=-2) > 0
    else:
        selected = hits.any(dim=-1)
    pos = torch.arange(T)
    allowed = selected[..., pos // block_size] & (pos.view(1, T, 1, 1) >= pos.view(1, 1, 1, T))
    s = torch.einsum("bthd,bshd->bths", q, k) * D**-0.5
    return torch.einsum("bths,bshd->bthd", s.masked_fill(~allowed, NEG_INF).softmax(-1), v)


MASK_MISSES = {
    "all_slots": "not the causal (or full) keys of its selected blocks",
    "selected_twice": "not the causal (or full) keys of its selected blocks",
    "block_numbers_shifted": "no query sees block 0 through this code",
    "one_hot_of_padding": "fails (index out of range) on valid block indices",
}


def test_the_unchanged_mask_variant_is_rewritten():
    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 1, 8, 8, 3), "padding", 0)
    rep = fsa_compile.explain(mask_variant, q, k, v, idx, bs, options=FAST)
    assert len(rep.rewrites) == 1 and rep.rewrites[0].options["count_duplicates"] is False, str(rep)


@pytest.mark.parametrize("change", sorted(MASK_MISSES))
def test_mask_near_miss_reason(change):
    q, k, v, idx, bs = make_inputs(Shape(1, 40, 2, 1, 8, 8, 3), "padding", 0)
    if change == "one_hot_of_padding":
        idx = idx.clamp(min=0)  # no padding in the example, so that eager runs; the pass still tries it
    rep = _explain(lambda *a: mask_variant(*a, change=change), q, k, v, idx, bs)
    assert len(rep.misses) == 1 and MASK_MISSES[change] in rep.misses[0].reason, str(rep)
