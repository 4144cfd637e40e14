"""DPO on the block-diffusion ELBO (R§5.3, Eq. 7):

  L = -E log sigma( beta * [ (B_theta(y_w) - B_ref(y_w)) - (B_theta(y_l) - B_ref(y_l)) ] ),
  B(y) = -sum_i 1[masked_i] * -log p(y_i | prompt, x_t) / t      (one Monte Carlo sample)

CHOICE (VRPO, LLaDA-1.5): the same (t, mask) draw is shared by policy and reference for the same
sequence, so the difference B_theta - B_ref has low variance. beta default 0.1. The reference is
frozen: its forward runs under no_grad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llada_core.objectives.block_diffusion import denoise_logits, weighted_masked_nll
from llada_core.objectives.common import LossOutput, Noise, apply_noise, draw_noise
from llada_core.objectives.sft import SFTBatch


def elbo(model, batch: SFTBatch, noise: Noise, block_size: int, mask_id: int) -> Tensor:
    """One-sample block-diffusion ELBO of each response given its prompt: [B]."""
    x0 = batch.input_ids
    logits = denoise_logits(model, apply_noise(x0, noise, mask_id), x0, batch.doc_ids, block_size)
    return -weighted_masked_nll(logits, x0, noise)


def dpo_loss(policy, reference, chosen: SFTBatch, rejected: SFTBatch, block_size: int, mask_id: int,
             beta: float = 0.1, generator: torch.Generator | None = None,
             noise: tuple[Noise, Noise] | None = None) -> LossOutput:
    noise_w, noise_l = noise or (draw_noise(chosen.response, generator), draw_noise(rejected.response, generator))
    pol_w, pol_l = elbo(policy, chosen, noise_w, block_size, mask_id), elbo(policy, rejected, noise_l, block_size, mask_id)
    with torch.no_grad():
        ref_w, ref_l = elbo(reference, chosen, noise_w, block_size, mask_id), elbo(reference, rejected, noise_l, block_size, mask_id)
    margin = (pol_w - ref_w) - (pol_l - ref_l)
    loss = -F.logsigmoid(beta * margin).mean()
    m = margin.detach()
    metrics = {"margin": m.mean().item(), "accuracy": (m > 0).float().mean().item(),
               "elbo_chosen": pol_w.detach().mean().item(), "elbo_rejected": pol_l.detach().mean().item()}
    return LossOutput(loss, metrics)
