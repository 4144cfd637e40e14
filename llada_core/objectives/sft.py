"""SFT (R§5.1, Eq. 5): block diffusion on the response only.

- Prompt tokens are never masked and never in the loss; only response tokens are noised.
- Each example is padded to a multiple of L_B; pad tokens are never masked and never counted (the
  public SFT code masks and counts them: a known bug). The tail of the last block is [MASK] context
  (see pad_examples), the rest of the padding (doc_ids = -1) is invisible.
- Mask ratio from the bandwidth t ~ U[alpha_min, alpha_max] (CHOICE [0.3, 0.8]).
- Complementary masking: each example appears twice, with a mask and its inverse over the response,
  so every response token is supervised exactly once per pair; the inverse copy has ratio 1 - t.
Normalised by the number of response tokens in the (doubled) batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llada_core.objectives.block_diffusion import denoise_logits, weighted_masked_nll
from llada_core.objectives.common import LossOutput, Noise, apply_noise, draw_noise


@dataclass
class SFTBatch:
    input_ids: Tensor  # [B, L], L a multiple of the block size
    doc_ids: Tensor  # [B, L], 0 for real tokens, -1 for padding
    response: Tensor  # [B, L] bool, True on response tokens (the only maskable / supervised ones)


def pad_examples(examples: list[tuple[list[int], int]], block_size: int, pad_id: int,
                 mask_id: int | None = None) -> SFTBatch:
    """(input_ids, prompt_len) examples -> one batch padded to a common multiple of block_size.

    With `mask_id`, the rest of the block an example ends in is [MASK] context (same document, never
    masked by the noise, never in the loss): exactly what the decoder shows the model, whose block
    after the answer is still all-[MASK] (CHOICE: without it a tiny model never saw those positions
    and did not learn where its answer ends). Padding beyond that block stays invisible."""
    longest = max(len(ids) for ids, _ in examples)
    L = -(-longest // block_size) * block_size
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    docs = torch.full((len(examples), L), -1, dtype=torch.long)
    response = torch.zeros((len(examples), L), dtype=torch.bool)
    for b, (seq, prompt_len) in enumerate(examples):
        ids[b, : len(seq)] = torch.tensor(seq)
        docs[b, : len(seq)] = 0
        response[b, prompt_len : len(seq)] = True
        if mask_id is not None:
            tail = -(-len(seq) // block_size) * block_size
            ids[b, len(seq) : tail] = mask_id
            docs[b, len(seq) : tail] = 0
    return SFTBatch(ids, docs, response)


def complementary(batch: SFTBatch, noise: Noise) -> tuple[SFTBatch, Noise]:
    """The batch twice: [mask ; inverse mask over the response], ratios [t ; 1 - t]."""
    doubled = SFTBatch(*(torch.cat([x, x]) for x in (batch.input_ids, batch.doc_ids, batch.response)))
    inverse = batch.response & ~noise.masked
    return doubled, Noise(torch.cat([noise.t, 1 - noise.t]), torch.cat([noise.masked, inverse]))


def sft_loss(model, batch: SFTBatch, block_size: int, mask_id: int, alpha_min: float = 0.3, alpha_max: float = 0.8,
                complementary_masking: bool = True, generator: torch.Generator | None = None,
                noise: Noise | None = None) -> LossOutput:
    noise = noise or draw_noise(batch.response, generator, alpha_min, alpha_max)
    if complementary_masking:
        batch, noise = complementary(batch, noise)
    x0 = batch.input_ids
    logits = denoise_logits(model, apply_noise(x0, noise, mask_id), x0, batch.doc_ids, block_size)
    n_response = batch.response.sum().clamp(min=1)
    loss = weighted_masked_nll(logits, x0, noise).sum() / n_response
    metrics = {"response_tokens": int(batch.response.sum()), "masked_tokens": int(noise.masked.sum())}
    return LossOutput(loss, metrics, logits, noise)
