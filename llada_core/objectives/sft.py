"""SFT (R§5.1, Eq. 5): block diffusion on the response only.

- Prompt tokens are never masked and never in the loss; only response tokens are noised.
- EOS tail (the LLaDA convention; CHOICE: on): the rest of the block a response ends in is filled
  with EOS, noised and supervised like the response, so the model learns to fill the tail of its
  last block confidently and stop. Batch padding beyond that block (doc_ids = -1) is invisible:
  never attended, never masked, never counted.
- Mask ratio from the bandwidth t ~ U[alpha_min, alpha_max] (CHOICE [0.3, 0.8]).
- Complementary masking: each example appears twice, with a mask and its inverse over the response,
  so every response (+ tail) token is supervised exactly once per pair; the inverse copy has ratio 1 - t.
Normalised by the number of response (+ tail) tokens in the (doubled) batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from llada_core.objectives.base import BlockConfig, Objective, StepContext
from llada_core.objectives.block_diffusion import denoise_inputs, weighted_masked_nll
from llada_core.objectives.common import (
    LossOutput,
    Noise,
    apply_noise,
    draw_noise,
    row_noise,
    sample_generator,
)
from llada_core.objectives.editing import EditConfig, add_random_tokens, edit_metrics, row_generators


class ResponseConfig(BlockConfig):
    """The knobs of every objective on prompt/response examples (SFT, CAP, DPO)."""

    alpha_min: float = Field(0.3, gt=0, le=1)  # mask-ratio bandwidth
    alpha_max: float = Field(0.8, gt=0, le=1)
    eos_tail: bool = True  # false: the rest of the last block is unsupervised [MASK] context

    @model_validator(mode="after")
    def _check(self):
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min: {self.alpha_min} exceeds alpha_max={self.alpha_max}")
        return self


class SFTConfig(ResponseConfig):
    kind: Literal["sft"] = "sft"
    complementary_masking: bool = True
    edit: EditConfig = EditConfig()  # the T2T stream of token editing (objectives/editing.py); off by default


@dataclass
class SFTBatch:
    input_ids: Tensor  # [B, L], L a multiple of the block size
    doc_ids: Tensor  # [B, L], 0 for real tokens, -1 for padding
    response: Tensor  # [B, L] bool, True on response tokens (the only maskable / supervised ones)


@dataclass
class NoisedSFT:
    batch: SFTBatch  # doubled under complementary masking
    noise: Noise
    block_size: int
    mask_id: int


def pad_examples(examples: list[tuple[list[int], int]], block_size: int, pad_id: int, *,
                 eos_id: int | None = None, mask_id: int | None = None) -> SFTBatch:
    """(input_ids, prompt_len) examples -> one batch padded to a common multiple of block_size.

    The rest of the block an example ends in (its tail) is, with `eos_id`, EOS that is part of the
    response (noised, supervised); with `mask_id`, [MASK] context (attended, never noised, never in
    the loss: what the decoder shows before the tail is decoded); with neither, invisible padding.
    Padding beyond that block is always invisible (doc_ids = -1)."""
    if eos_id is not None and mask_id is not None:
        raise ValueError("pad_examples: give eos_id (EOS tail) or mask_id ([MASK] tail), not both")
    longest = max(len(ids) for ids, _ in examples)
    L = -(-longest // block_size) * block_size
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    docs = torch.full((len(examples), L), -1, dtype=torch.long)
    response = torch.zeros((len(examples), L), dtype=torch.bool)
    for b, (seq, prompt_len) in enumerate(examples):
        ids[b, : len(seq)] = torch.tensor(seq)
        docs[b, : len(seq)] = 0
        response[b, prompt_len : len(seq)] = True
        tail_id = eos_id if eos_id is not None else mask_id
        if tail_id is not None:
            tail = -(-len(seq) // block_size) * block_size
            ids[b, len(seq) : tail] = tail_id
            docs[b, len(seq) : tail] = 0
            response[b, len(seq) : tail] = eos_id is not None
    return SFTBatch(ids, docs, response)


def complementary(batch: SFTBatch, noise: Noise) -> tuple[SFTBatch, Noise]:
    """The batch twice: [mask ; inverse mask over the response], ratios [t ; 1 - t]."""
    doubled = SFTBatch(*(torch.cat([x, x]) for x in (batch.input_ids, batch.doc_ids, batch.response)))
    inverse = batch.response & ~noise.masked
    return doubled, Noise(torch.cat([noise.t, 1 - noise.t]), torch.cat([noise.masked, inverse]))


def noised(batch: SFTBatch, noise: Noise, block_size: int, mask_id: int, complementary_masking: bool) -> NoisedSFT:
    if complementary_masking:
        batch, noise = complementary(batch, noise)
    return NoisedSFT(batch, noise, block_size, mask_id)


def sft_inputs(b: NoisedSFT) -> dict:
    x0 = b.batch.input_ids
    return denoise_inputs(apply_noise(x0, b.noise, b.mask_id), x0, b.batch.doc_ids, b.block_size)


def sft_from_logits(logits: Tensor, b: NoisedSFT) -> LossOutput:
    x0 = b.batch.input_ids
    logits = logits[:, : x0.shape[1]]
    n_response = b.batch.response.sum().clamp(min=1)
    loss = weighted_masked_nll(logits, x0, b.noise).sum() / n_response
    metrics = {"response_tokens": int(b.batch.response.sum()), "masked_tokens": int(b.noise.masked.sum())}
    metrics |= edit_metrics(b.noise)
    return LossOutput(loss, metrics, logits, b.noise)


def sft_loss(model, batch: SFTBatch, block_size: int, mask_id: int, alpha_min: float = 0.3, alpha_max: float = 0.8,
             complementary_masking: bool = True, generator: torch.Generator | None = None,
             noise: Noise | None = None) -> LossOutput:
    noise = noise or draw_noise(batch.response, generator, alpha_min, alpha_max)
    b = noised(batch, noise, block_size, mask_id, complementary_masking)
    return sft_from_logits(model(**sft_inputs(b)), b)


def example_batch(rows: list[dict], key: str, cfg: ResponseConfig, ctx: StepContext) -> SFTBatch:
    """Rows of an instruction dataset (`key` = input_ids, chosen_ids or rejected_ids + prompt_len)."""
    tail = {"eos_id": ctx.eos_id} if cfg.eos_tail else {"mask_id": ctx.mask_id}
    return pad_examples([(r[key], r["prompt_len"]) for r in rows], cfg.block_size, ctx.pad_id, **tail)


class SFT(Objective):
    kind, Config, data_kind = "sft", SFTConfig, "sft"

    def batch(self, rows: list[dict], ctx: StepContext) -> NoisedSFT:
        c = self.cfg
        batch = example_batch(rows, "input_ids", c, ctx)
        gens = [sample_generator(ctx.seed, p) for p in ctx.positions]
        noise = row_noise(batch.response, gens, c.alpha_min, c.alpha_max)
        b = noised(batch, noise, c.block_size, ctx.mask_id, c.complementary_masking)
        copies = 2 if c.complementary_masking else 1  # each copy's visible tokens get their own random ones
        b.noise = add_random_tokens(b.noise, b.batch.response, row_generators(ctx.seed, ctx.positions, copies), c.edit,
                                    ctx.vocab_size, ctx.mask_id)
        return b

    def model_inputs(self, b: NoisedSFT) -> dict:
        return sft_inputs(b)

    def loss(self, logits: Tensor, b: NoisedSFT) -> LossOutput:
        return sft_from_logits(logits, b)

    def real_tokens(self, rows: list[dict]) -> int:
        return sum(len(r["input_ids"]) for r in rows)


OBJECTIVE = SFT
