"""Attention masks of the recipe, each written ONCE as an elementwise predicate over (query, key).

Convention: True = the query may attend to the key (SDPA's convention; megatron's is the inverse).
Predicates use only elementwise tensor ops, so the same function
  - materialises a dense [B, Q, K] boolean mask by broadcasting (what the model receives), and
  - can serve as a flex-attention `mask_mod(b, h, q, k)` (`as_mask_mod`, tested equal to the dense
    mask). The flex backend does not use it yet: the denoiser interface passes the dense mask, and
    llada_core.model.attention builds its BlockMask from that tensor.
Every mask is AND-ed with same-document from `doc_ids` ([B, L]; -1 marks padding, which only
attends to padding, so no row is ever empty).

Block of position i: b(i) = floor(i / L_B). Block diffusion input is [x_t ; x_0] of length 2L, both
halves with positions 0..L-1 (recipe Eq. 3):
  x_t -> x_t : b(i) == b(j)            same noisy block, bidirectional
  x_t -> x_0 : b(i) >  b(j - L)        strictly earlier clean blocks
  x_0 -> x_0 : b(i - L) >= b(j - L)    block-causal over clean blocks
  x_0 -> x_t : never
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_allowed(q: Tensor, k: Tensor) -> Tensor:
    """AR (block size 1): a token sees itself and earlier tokens."""
    return k <= q


def full_allowed(q: Tensor, k: Tensor) -> Tensor:
    """Full-sequence masked diffusion (Eq. 4 without documents): everything sees everything."""
    return (q >= 0) & (k >= 0)


def block_diffusion_allowed(q: Tensor, k: Tensor, seq_len: int, block_size: int) -> Tensor:
    """Eq. 3 over the 2L-long [x_t ; x_0] input."""
    q_noisy, k_noisy = q < seq_len, k < seq_len
    bq, bk = (q % seq_len) // block_size, (k % seq_len) // block_size
    noisy_noisy = q_noisy & k_noisy & (bq == bk)
    noisy_clean = q_noisy & ~k_noisy & (bq > bk)
    clean_clean = ~q_noisy & ~k_noisy & (bq >= bk)
    return noisy_noisy | noisy_clean | clean_clean


def block_causal_allowed(q: Tensor, k: Tensor, block_size: int) -> Tensor:
    """Inference layout (clean context followed by the block being decoded): b(k) <= b(q)."""
    return k // block_size <= q // block_size


def _materialise(pred, n_q: int, n_k: int, doc_q: Tensor, doc_k: Tensor) -> Tensor:
    q = torch.arange(n_q, device=doc_q.device)[:, None]
    k = torch.arange(n_k, device=doc_q.device)[None, :]
    same_doc = doc_q[:, :, None] == doc_k[:, None, :]
    return pred(q, k)[None] & same_doc


def causal_mask(doc_ids: Tensor) -> Tensor:
    """[B, L, L]: AR within each document."""
    L = doc_ids.shape[1]
    return _materialise(causal_allowed, L, L, doc_ids, doc_ids)


def document_mask(doc_ids: Tensor) -> Tensor:
    """[B, L, L]: Eq. 4, full attention within each document (stable phase, input x_t only)."""
    L = doc_ids.shape[1]
    return _materialise(full_allowed, L, L, doc_ids, doc_ids)


def block_diffusion_mask(doc_ids: Tensor, block_size: int) -> Tensor:
    """[B, 2L, 2L]: Eq. 3 AND same document, for the [x_t ; x_0] input."""
    L = doc_ids.shape[1]
    if L % block_size:
        raise ValueError(f"seq_len={L} is not a multiple of block_size={block_size}")
    docs = torch.cat([doc_ids, doc_ids], dim=1)
    return _materialise(lambda q, k: block_diffusion_allowed(q, k, L, block_size), 2 * L, 2 * L, docs, docs)


def block_causal_mask(doc_ids: Tensor, block_size: int) -> Tensor:
    """[B, L, L]: decoding layout, block-causal AND same document."""
    L = doc_ids.shape[1]
    return _materialise(lambda q, k: block_causal_allowed(q, k, block_size), L, L, doc_ids, doc_ids)


def as_mask_mod(pred, doc_ids: Tensor):
    """A flex-attention mask_mod (b, h, q, k) -> bool for a predicate over positions of `doc_ids`
    (for the 2L block-diffusion input pass doc_ids already concatenated twice)."""

    def mask_mod(b, h, q, k):
        return pred(q, k) & (doc_ids[b, q] == doc_ids[b, k])

    return mask_mod
