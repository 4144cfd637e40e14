"""Masks vs a brute-force construction written directly from the recipe's table (Eq. 3/4)."""

import pytest
import torch

from llada_core import masks


def brute_block_diffusion(doc_ids, block):
    B, L = doc_ids.shape
    out = torch.zeros(B, 2 * L, 2 * L, dtype=torch.bool)
    for b in range(B):
        for i in range(2 * L):
            for j in range(2 * L):
                pi, pj = i % L, j % L
                if doc_ids[b, pi] != doc_ids[b, pj]:
                    continue
                bi, bj = pi // block, pj // block
                if i < L and j < L:
                    ok = bi == bj
                elif i < L <= j:
                    ok = bi > bj
                elif i >= L and j >= L:
                    ok = bi >= bj
                else:
                    ok = False
                out[b, i, j] = ok
    return out


def brute_simple(doc_ids, rule):
    B, L = doc_ids.shape
    return torch.tensor([[[bool(doc_ids[b, i] == doc_ids[b, j] and rule(i, j)) for j in range(L)] for i in range(L)]
                         for b in range(B)])


def packed_docs(L, seed, pad=0):
    """A packed row: random document lengths, optional trailing padding (-1)."""
    g = torch.Generator().manual_seed(seed)
    ids, doc = [], 0
    while len(ids) < L - pad:
        n = int(torch.randint(1, max(2, L // 2), (1,), generator=g))
        ids += [doc] * n
        doc += 1
    return ids[: L - pad] + [-1] * pad


@pytest.mark.parametrize("L, block", [(8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (16, 16), (16, 4)])
def test_block_diffusion_matches_table(L, block):
    doc_ids = torch.tensor([packed_docs(L, s, pad=s % 3) for s in range(3)] + [[0] * L])
    assert torch.equal(masks.block_diffusion_mask(doc_ids, block), brute_block_diffusion(doc_ids, block))


@pytest.mark.parametrize("L", [1, 5, 9])
def test_causal_and_document_masks(L):
    doc_ids = torch.tensor([packed_docs(L, s) for s in range(3)])
    assert torch.equal(masks.causal_mask(doc_ids), brute_simple(doc_ids, lambda i, j: j <= i))
    assert torch.equal(masks.document_mask(doc_ids), brute_simple(doc_ids, lambda i, j: True))


@pytest.mark.parametrize("block", [1, 2, 3, 6])
def test_block_causal_decoding_mask(block):
    doc_ids = torch.tensor([packed_docs(6, s) for s in range(2)])
    expected = brute_simple(doc_ids, lambda i, j: j // block <= i // block)
    assert torch.equal(masks.block_causal_mask(doc_ids, block), expected)


def test_block_size_one_clean_half_is_causal_and_full_block_is_document():
    doc_ids = torch.tensor([packed_docs(8, 4)])
    m1 = masks.block_diffusion_mask(doc_ids, 1)
    assert torch.equal(m1[:, 8:, 8:], masks.causal_mask(doc_ids))
    mL = masks.block_diffusion_mask(doc_ids, 8)
    assert torch.equal(mL[:, :8, :8], masks.document_mask(doc_ids))
    assert not mL[:, :8, 8:].any() and not mL[:, 8:, :8].any()  # one block: nothing earlier, x_0 never sees x_t


def test_no_empty_rows_and_rejects_bad_block():
    doc_ids = torch.tensor([packed_docs(12, 1, pad=4)])
    assert masks.block_diffusion_mask(doc_ids, 4).any(-1).all()
    with pytest.raises(ValueError, match="not a multiple of block_size=5"):
        masks.block_diffusion_mask(doc_ids, 5)


def test_mask_mod_agrees_with_dense():
    doc_ids = torch.tensor([packed_docs(8, 2)])
    docs2 = torch.cat([doc_ids, doc_ids], 1)
    mod = masks.as_mask_mod(lambda q, k: masks.block_diffusion_allowed(q, k, 8, 4), docs2)
    dense = masks.block_diffusion_mask(doc_ids, 4)
    for q in range(16):
        for k in range(16):
            assert bool(mod(torch.tensor(0), None, torch.tensor(q), torch.tensor(k))) == bool(dense[0, q, k])
