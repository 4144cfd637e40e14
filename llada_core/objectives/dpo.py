"""DPO on the block-diffusion ELBO (R§5.3, Eq. 7):

  L = -E log sigma( beta * [ (B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l)) ] ),
  B(y) = -sum_i 1[masked_i] * -log p(y_i | prompt, x_t) / t      (one Monte Carlo sample)

CHOICE (VRPO, LLaDA-1.5): the same (t, mask) draw is shared by policy and reference for the same
sequence, so the difference B_theta - B_ref has low variance. beta default 0.1. CHOICE: t from the
SFT band [alpha_min, alpha_max] the reference was trained on, and the same EOS tail: with t down to
1e-3 the 1/t weight reaches 1000 and saturates the sigmoid on states SFT never showed the model. The reference is
frozen: its forward runs under no_grad. Two forwards of each model per micro-batch: no pipeline
parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from llada_core.objectives.base import Objective, StepContext
from llada_core.objectives.block_diffusion import denoise_logits, weighted_masked_nll
from llada_core.objectives.common import (
    LossOutput,
    Noise,
    apply_noise,
    draw_noise,
    row_noise,
    sample_generator,
)
from llada_core.objectives.sft import ResponseConfig, SFTBatch, example_batch


class DPOConfig(ResponseConfig):
    kind: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0)


def elbo(model, batch: SFTBatch, noise: Noise, block_size: int, mask_id: int) -> Tensor:
    """One-sample block-diffusion ELBO of each response given its prompt: [B]."""
    x0 = batch.input_ids
    logits = denoise_logits(model, apply_noise(x0, noise, mask_id), x0, batch.doc_ids, block_size)
    return -weighted_masked_nll(logits, x0, noise)


def dpo_loss(policy, reference, chosen: SFTBatch, rejected: SFTBatch, block_size: int, mask_id: int,
             beta: float = 0.1, generator: torch.Generator | None = None,
             noise: tuple[Noise, Noise] | None = None) -> LossOutput:
    noise_w, noise_l = noise or (draw_noise(chosen.response, generator), draw_noise(rejected.response, generator))
    pol_w = elbo(policy, chosen, noise_w, block_size, mask_id)
    pol_l = elbo(policy, rejected, noise_l, block_size, mask_id)
    with torch.no_grad():
        ref_w = elbo(reference, chosen, noise_w, block_size, mask_id)
        ref_l = elbo(reference, rejected, noise_l, block_size, mask_id)
    margin = (pol_w - ref_w) - (pol_l - ref_l)
    loss = -F.logsigmoid(beta * margin).mean()
    m = margin.detach()
    metrics = {"margin": m.mean().item(), "accuracy": (m > 0).float().mean().item(),
               "elbo_chosen": pol_w.detach().mean().item(), "elbo_rejected": pol_l.detach().mean().item()}
    return LossOutput(loss, metrics)


@dataclass
class PairBatch:
    chosen: SFTBatch
    rejected: SFTBatch
    noise: tuple[Noise, Noise]
    mask_id: int


class DPO(Objective):
    kind, Config, data_kind = "dpo", DPOConfig, "dpo"
    needs_reference, pipeline_parallel = True, False

    def batch(self, rows: list[dict], ctx: StepContext) -> PairBatch:
        c = self.cfg
        chosen, rejected = (example_batch(rows, key, c, ctx) for key in ("chosen_ids", "rejected_ids"))
        gens = [sample_generator(ctx.seed, p) for p in ctx.positions]  # chosen's draw, then rejected's
        noise = tuple(row_noise(b.response, gens, c.alpha_min, c.alpha_max) for b in (chosen, rejected))
        return PairBatch(chosen, rejected, noise, ctx.mask_id)

    def forward_loss(self, model, reference, b: PairBatch) -> LossOutput:
        return dpo_loss(model, reference, b.chosen, b.rejected, self.cfg.block_size, b.mask_id, beta=self.cfg.beta,
                        noise=b.noise)

    def real_tokens(self, rows: list[dict]) -> int:
        return sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)


OBJECTIVE = DPO
