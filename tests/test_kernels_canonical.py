"""The one-launch canonical indices (lowering/canonical.py) against the reference's
``canonical_indices``: equal element for element, for every index dtype and out-of-range policy,
any layout; on CPU through the Triton interpreter and, with ``-m gpu``, on CUDA."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsa_compile import reference
from fsa_compile.lowering import canonical
from fsa_compile.lowering.canonical import canonical_indices

DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def random_indices(shape, nb, dtype, gen, device="cpu", transposed=False):
    """Entries in ``[-3, nb + 2]`` (padding of several spellings, in range, past the end); int64
    also gets a value past 2**31, which must not wrap into range."""
    lo = 0 if dtype == torch.uint8 else -3
    x = torch.randint(lo, nb + 3, shape, generator=gen).to(dtype)
    if dtype == torch.int64 and x.numel():
        x.view(-1)[0] = 2**31 + 1
    if transposed:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.to(device)


def check(x, seq_len, bs, policy, count_duplicates=True):
    want = reference.canonical_indices(x.cpu(), seq_len, bs, count_duplicates=count_duplicates,
                                       on_out_of_range=policy)
    got = canonical_indices(x, seq_len, bs, count_duplicates=count_duplicates, on_out_of_range=policy)
    assert got.dtype == torch.int32 and got.is_contiguous() and got.shape == x.shape
    assert torch.equal(got.cpu(), want)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 9), H=st.integers(1, 3), n=st.integers(1, 5),
       seq_len=st.integers(1, 70), bs=st.sampled_from([1, 8, 16]), dtype=st.sampled_from(DTYPES),
       transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_canonical_matches_the_reference(B, T, H, n, seq_len, bs, dtype, transposed, seed):
    nb = reference.num_blocks(seq_len, bs)
    x = random_indices((B, T, H, n), nb, dtype, torch.Generator().manual_seed(seed), transposed=transposed)
    check(x, seq_len, bs, "drop")


def test_the_kernel_writes_every_entry(monkeypatch):
    """Poisoned output: the kernel must overwrite all of it (more entries than one program)."""
    real, made = torch.empty, []

    def poisoned(*args, **kwargs):
        made.append(real(*args, **kwargs).fill_(12345))
        return made[-1]

    monkeypatch.setattr(canonical.torch, "empty", poisoned)
    x = random_indices((1, 300, 2, 3), 5, torch.int64, torch.Generator().manual_seed(1))
    got = canonical_indices(x, 40, 8, count_duplicates=True, on_out_of_range="drop")
    assert len(made) == 1 and got is made[0]  # the kernel's path, not the reference's
    assert not (got == 12345).any()
    check(x, 40, 8, "drop")


def test_policies_raise_and_assert():
    x = torch.tensor([[[[0, 4, -1]]]])
    with pytest.raises(ValueError, match=r"out of range"):
        canonical_indices(x, 32, 8, count_duplicates=True, on_out_of_range="raise")
    with pytest.raises(RuntimeError):
        canonical_indices(x, 32, 8, count_duplicates=True, on_out_of_range="assert")
    ok = torch.tensor([[[[0, 3, -7]]]])
    for policy in ("raise", "assert"):
        check(ok, 32, 8, policy)
    with pytest.raises(ValueError, match="on_out_of_range"):
        canonical_indices(ok, 32, 8, count_duplicates=True, on_out_of_range="clip")


def test_duplicates_removed_by_the_reference():
    x = torch.tensor([[[[2, 2, -1, 1, 2]]]])
    check(x, 32, 8, "drop", count_duplicates=False)


@pytest.mark.gpu
def test_canonical_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        check(random_indices((2, 700, 4, 16), 20, dtype, gen, device="cuda", transposed=True), 1250, 64, "drop")
        check(random_indices((1, 3, 4, 16), 20, dtype, gen, device="cuda").clamp(max=19), 1250, 64, "assert")
