"""The canonical block indices in one pass: int32, ``-1`` for padding (and, under ``drop``, for
entries past the last block), every other entry as it was. What ``reference.canonical_indices``
computes with four or five elementwise ops, each its own launch."""
import triton
import triton.language as tl


@triton.jit
def canonical_kernel(IDX, OUT, numel, NB, DROP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    x = tl.load(IDX + offs, mask=ok, other=0)
    # compared in the indices' own dtype: an int64 entry >= 2**31 must not wrap into range
    bad = x < 0
    if DROP:
        bad = bad | (x >= NB)
    tl.store(OUT + offs, tl.where(bad, -1, x.to(tl.int32)), mask=ok)
