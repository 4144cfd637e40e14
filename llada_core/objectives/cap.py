"""CAP, confidence-aware parallel training (R§5.2):

  L = L_SFT + lambda * L_conf,
  L_conf = mean over masked positions where argmax_v p(v) == x_0 of the entropy H(p).

Sharpening the model where it is already right lets more tokens pass the decoding threshold per
step. lambda CHOICE: 2.0.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from llada_core.objectives.common import LossOutput
from llada_core.objectives.sft import SFT, NoisedSFT, SFTBatch, SFTConfig, sft_from_logits, sft_loss


class CAPConfig(SFTConfig):
    kind: Literal["cap"] = "cap"
    lam: float = Field(2.0, ge=0)  # lambda, the weight of L_conf


def confidence_entropy(logits: Tensor, x0: Tensor, masked: Tensor) -> tuple[Tensor, int]:
    """Mean entropy over masked positions predicted correctly (0 when there are none)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    correct = masked & (logits.argmax(-1) == x0)
    n = int(correct.sum())
    return (entropy * correct).sum() / max(n, 1), n


def with_confidence(out: LossOutput, x0: Tensor, lam: float) -> LossOutput:
    """L_SFT + lambda * L_conf from the SFT loss output (whose batch x0 may be doubled)."""
    l_conf, n_correct = confidence_entropy(out.logits, x0, out.noise.masked)
    metrics = dict(out.metrics, sft_loss=out.loss.item(), conf_loss=l_conf.item(), conf_tokens=n_correct)
    return LossOutput(out.loss + lam * l_conf, metrics, out.logits, out.noise)


def cap_loss(model, batch: SFTBatch, block_size: int, mask_id: int, lam: float = 2.0, **kw) -> LossOutput:
    out = sft_loss(model, batch, block_size, mask_id, **kw)
    doubled_x0 = batch.input_ids.repeat(out.noise.masked.shape[0] // batch.input_ids.shape[0], 1)
    return with_confidence(out, doubled_x0, lam)


class CAP(SFT):
    kind, Config = "cap", CAPConfig

    def loss(self, logits: Tensor, b: NoisedSFT) -> LossOutput:
        return with_confidence(sft_from_logits(logits, b), b.batch.input_ids, self.cfg.lam)


OBJECTIVE = CAP
