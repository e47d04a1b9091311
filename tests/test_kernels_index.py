"""The inverted index (templates/index.py) against a plain Python construction of it.

For every (b, h): the entries ``t * n + slot`` that selected block j, in increasing order, and
with a chunk of C query tokens, the sub-range of each (block, chunk) bin; padding never listed.
Runs on CPU through the Triton interpreter (its key kernel) and, with ``-m gpu``, on CUDA.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsa_compile.templates.index import build_block_index, max_tiles, retile


def expected(idx, nb, chunk):
    B, T, H, n = idx.shape
    nc = -(-T // chunk) if chunk else 1
    C = chunk if chunk else T
    out = {(b, h, j, c): [] for b in range(B) for h in range(H) for j in range(nb) for c in range(nc)}
    rows = idx.tolist()
    for b in range(B):
        for t in range(T):  # in increasing t * n + s, the order the index must keep
            for h in range(H):
                for s in range(n):
                    j = rows[b][t][h][s]
                    if 0 <= j < nb:
                        out[b, h, j, t // C].append(t * n + s)
    return out, nc


def check(idx, nb, tile, chunk, tile_map):
    B, T, H, n = idx.shape
    bi = build_block_index(idx, nb, tile, tile_map=tile_map, chunk=chunk)
    want, nc = expected(idx.cpu(), nb, chunk)
    assert bi.chunks == nc and bi.entries.shape == (B, H, T * n) and bi.offsets.shape == (B, H, nb + 1)
    # as lists: indexing tensors element by element is what made this check slow at 16K blocks
    off, ent, bins = bi.offsets.tolist(), bi.entries.tolist(), bi.bin_offsets.tolist()
    toff = bi.tile_offsets.tolist()
    for b in range(B):
        for h in range(H):
            for j in range(nb):
                whole = ent[b][h][off[b][h][j]:off[b][h][j + 1]]
                assert whole == sum((want[b, h, j, c] for c in range(nc)), [])
                for c in range(nc):
                    s0, s1 = bins[b][h][j * nc + c], bins[b][h][j * nc + c + 1]
                    assert ent[b][h][s0:s1] == want[b, h, j, c]
                    ntiles = -(-len(want[b, h, j, c]) // tile)
                    assert toff[b][h][c][j + 1] - toff[b][h][c][j] == ntiles
            for c in range(nc):
                assert toff[b][h][c][nb] <= bi.max_tiles
                if tile_map:
                    tb = bi.tile_block[b, h, c].tolist()
                    for pid in range(bi.max_tiles):
                        j = tb[pid]
                        if pid < toff[b][h][c][nb]:
                            assert toff[b][h][c][j] <= pid < toff[b][h][c][j + 1]
                        else:
                            assert j == nb
    # the backward's tiles over all of T, from the block offsets alone
    rt = retile(bi.offsets, 3)
    counts = (bi.offsets[..., 1:] - bi.offsets[..., :-1] + 2) // 3
    assert torch.equal(rt[..., 1:], torch.cumsum(counts, -1).to(torch.int32)) and (rt[..., 0] == 0).all()


def random_idx(B, T, H, n, nb, gen, layout="bthd", device="cpu"):
    idx = torch.randint(-2, nb, (B, T, H, n), generator=gen, dtype=torch.int32)
    idx = torch.where(idx < 0, torch.full_like(idx, -1), idx)
    if n > 1:
        idx[:, ::2, :, -1] = idx[:, ::2, :, 0]  # duplicates
    if layout == "bhtd":  # stored [B, H, T, n], seen through a transposed view
        idx = idx.transpose(1, 2).contiguous().transpose(1, 2)
    return idx.to(device)


@pytest.mark.parametrize("chunk", [0, 7, 16, 40])
def test_index_matches_python(chunk):
    gen = torch.Generator().manual_seed(chunk)
    check(random_idx(2, 37, 2, 3, 5, gen, "bhtd"), 5, 4, chunk, tile_map=True)


@pytest.mark.parametrize("nb", [2**15 // 2 - 1, 2**15 // 2])
def test_index_at_the_16_bit_key_limit(nb):
    """Keys are ``segment * (nb + 1) + block``: 16-bit up to 2**15 keys, 32-bit past that."""
    gen = torch.Generator().manual_seed(nb)
    idx = random_idx(1, 9, 2, 3, nb, gen, "bthd")
    idx[0, 3, 1, 0] = nb - 1  # the largest key of the last segment
    check(idx, nb, 2, 4, tile_map=False)


def test_max_tiles_bound():
    assert max_tiles(100, 10, 8) == 12 + 10 and max_tiles(3, 10, 8) == 0 + 3


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(B=st.integers(1, 2), T=st.integers(1, 30), H=st.integers(1, 3), n=st.integers(1, 4),
       nb=st.integers(1, 6), tile=st.integers(1, 5), chunk=st.sampled_from([0, 1, 4, 9, 64]),
       tile_map=st.booleans(), layout=st.sampled_from(["bthd", "bhtd"]), seed=st.integers(0, 2**16))
def test_index_property(B, T, H, n, nb, tile, chunk, tile_map, layout, seed):
    check(random_idx(B, T, H, n, nb, torch.Generator().manual_seed(seed), layout), nb, tile, chunk, tile_map)


@pytest.mark.gpu
def test_index_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(0)
    check(random_idx(2, 300, 2, 4, 9, gen, "bhtd", device="cuda"), 9, 8, 64, tile_map=True)
