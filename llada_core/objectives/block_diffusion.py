"""Continual pre-training losses: block diffusion (Eq. 1) and full-sequence MDLM (Eq. 2).

Eq. 1:  L = E_t [ w(t) * sum_k sum_i 1[x_t^{k,i} = MASK] * -log p( x_0^{k,i} | x_0^{<k}, x_t^{k} ) ],
        w(t) = 1/t for the linear schedule alpha_t = 1 - t.
The input is [x_t ; x_0] (2L) under the Eq. 3 mask; the loss is read from the x_t half only.
Eq. 2 (stable phase, L_B = L) is the same loss with K = 1: the x_0 copy is never attended, so the
input is x_t alone (L, not 2L) under the document mask (Eq. 4).
CHOICE (recipe): normalise by the number of non-pad tokens in the batch, not the masked count, so the
ELBO weighting stays intact. Pad tokens (doc_ids = -1) are never masked and never in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from llada_core import masks
from llada_core.objectives.base import BlockConfig, Objective, StepContext
from llada_core.objectives.common import (
    LossOutput,
    Noise,
    apply_noise,
    draw_noise,
    packed_tensors,
    packed_tokens,
    positions,
    row_noise,
    sample_generator,
    token_nll,
)
from llada_core.objectives.editing import EditConfig, add_random_tokens, edit_metrics, row_generators


class CPTConfig(BlockConfig):
    kind: Literal["cpt"] = "cpt"
    # CPT starts from an AR model (pretrained or imported) whose [MASK] embedding is near zero: Gaussian
    # noise on the embedding output at [MASK] (R§4) for the first mask_noise_steps optimizer steps of the
    # whole CPT (phase nodes that carry their state continue the count). CHOICE: std 0.1, 100 steps
    # (tiny-cpu: the block-1 and block-4 warm-up); std 0 turns it off.
    mask_noise_std: float = Field(0.1, ge=0)
    mask_noise_steps: int = Field(100, ge=0)
    edit: EditConfig = EditConfig()  # the T2T stream of token editing (objectives/editing.py); off by default


def denoise_inputs(xt: Tensor, x0: Tensor, doc_ids: Tensor, block_size: int) -> dict:
    """The denoiser's inputs (input_ids, position_ids, allowed, logits_len): [x_t ; x_0] under Eq. 3,
    or x_t alone under Eq. 4 when L_B = L. Only the x_t positions' logits are read: the first L of
    the output, and the only ones the model computes (logits_len)."""
    B, L = x0.shape
    pos = positions(B, L, x0.device)
    if block_size == L:
        return {"input_ids": xt, "position_ids": pos, "allowed": masks.document_mask(doc_ids)}
    return {"input_ids": torch.cat([xt, x0], 1), "position_ids": torch.cat([pos, pos], 1),
            "allowed": masks.block_diffusion_mask(doc_ids, block_size), "logits_len": L}


def denoise_logits(model, xt: Tensor, x0: Tensor, doc_ids: Tensor, block_size: int) -> Tensor:
    """Logits at the x_t positions, [B, L, V], for any block size."""
    return model(**denoise_inputs(xt, x0, doc_ids, block_size))[:, : x0.shape[1]]


def weighted_masked_nll(logits: Tensor, x0: Tensor, noise: Noise) -> Tensor:
    """Per-sequence sum_i 1[masked_i] * -log p(x0_i) / t  ->  [B]; with the T2T stream on, plus
    edit_weight * sum_i 1[supervised_i] * -log p(x0_i) over the visible positions it supervises."""
    nll = token_nll(logits, x0)
    out = (nll * noise.masked).sum(1) / noise.t
    return out if noise.supervised is None else out + noise.edit_weight * (nll * noise.supervised).sum(1)


def block_diffusion_from_logits(logits: Tensor, x0: Tensor, doc_ids: Tensor, block_size: int,
                                noise: Noise) -> LossOutput:
    """Eq. 1 from the denoiser's output (the first L positions are the x_t half)."""
    logits = logits[:, : x0.shape[1]]
    valid = doc_ids >= 0
    loss = weighted_masked_nll(logits, x0, noise).sum() / valid.sum().clamp(min=1)
    metrics = {"block_size": block_size, "mask_ratio": float(noise.masked.sum() / valid.sum().clamp(min=1)),
               "tokens": int(valid.sum())} | edit_metrics(noise)
    return LossOutput(loss, metrics, logits, noise)


def block_diffusion_loss(model, x0: Tensor, doc_ids: Tensor, block_size: int, mask_id: int,
                         noise: Noise | None = None, generator: torch.Generator | None = None) -> LossOutput:
    noise = noise or draw_noise(doc_ids >= 0, generator)
    logits = model(**denoise_inputs(apply_noise(x0, noise, mask_id), x0, doc_ids, block_size))
    return block_diffusion_from_logits(logits, x0, doc_ids, block_size, noise)


def mdlm_loss(model, x0: Tensor, doc_ids: Tensor, mask_id: int, noise: Noise | None = None,
              generator: torch.Generator | None = None) -> LossOutput:
    """Eq. 2: the stable phase, L_B = L, input x_t only."""
    return block_diffusion_loss(model, x0, doc_ids, x0.shape[1], mask_id, noise, generator)


@dataclass
class NoisedBatch:
    x0: Tensor
    doc_ids: Tensor
    noise: Noise
    block_size: int
    mask_id: int
    mask_noise: tuple | None  # (mask_id, std, a generator per row) for the model's [MASK]-embedding noise


class CPT(Objective):
    kind, Config, data_kind = "cpt", CPTConfig, "pretrain"

    def batch(self, rows: list[dict], ctx: StepContext) -> NoisedBatch:
        x0, doc = packed_tensors(rows)
        noise = row_noise(doc >= 0, [sample_generator(ctx.seed, p) for p in ctx.positions])
        noise = add_random_tokens(noise, doc >= 0, row_generators(ctx.seed, ctx.positions), self.cfg.edit,
                                  ctx.vocab_size, ctx.mask_id)
        block = ctx.block_size or self.cfg.block_size
        mask_noise = None
        if self.cfg.mask_noise_std and ctx.step < self.cfg.mask_noise_steps:  # each row's own, like its mask
            gens = [sample_generator(ctx.seed + 1, p) for p in ctx.positions]
            mask_noise = (ctx.mask_id, self.cfg.mask_noise_std, gens)
        return NoisedBatch(x0, doc, noise, block, ctx.mask_id, mask_noise)

    def model_inputs(self, b: NoisedBatch) -> dict:
        extra = {"mask_noise": b.mask_noise} if b.mask_noise else {}
        return denoise_inputs(apply_noise(b.x0, b.noise, b.mask_id), b.x0, b.doc_ids, b.block_size) | extra

    def loss(self, logits: Tensor, b: NoisedBatch) -> LossOutput:
        return block_diffusion_from_logits(logits, b.x0, b.doc_ids, b.block_size, b.noise)  # Eq. 1

    def real_tokens(self, rows: list[dict]) -> int:
        return packed_tokens(rows)


OBJECTIVE = CPT
