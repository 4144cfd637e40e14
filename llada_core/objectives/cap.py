"""CAP, confidence-aware parallel training (R§5.2):

  L = L_SFT + lambda * L_conf,
  L_conf = mean over masked positions where argmax_v p(v) == x_0 of the entropy H(p).

Sharpening the model where it is already right lets more tokens pass the decoding threshold per
step. lambda CHOICE: 2.0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llada_core.objectives.common import LossOutput
from llada_core.objectives.sft import SFTBatch, sft_loss


def confidence_entropy(logits: Tensor, x0: Tensor, masked: Tensor) -> tuple[Tensor, int]:
    """Mean entropy over masked positions predicted correctly (0 when there are none)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    correct = masked & (logits.argmax(-1) == x0)
    n = int(correct.sum())
    return (entropy * correct).sum() / max(n, 1), n


def cap_loss(model, batch: SFTBatch, block_size: int, mask_id: int, lam: float = 2.0, **kw) -> LossOutput:
    out = sft_loss(model, batch, block_size, mask_id, **kw)
    doubled_x0 = batch.input_ids.repeat(out.noise.masked.shape[0] // batch.input_ids.shape[0], 1)
    l_conf, n_correct = confidence_entropy(out.logits, doubled_x0, out.noise.masked)
    metrics = dict(out.metrics, sft_loss=out.loss.item(), conf_loss=l_conf.item(), conf_tokens=n_correct)
    return LossOutput(out.loss + lam * l_conf, metrics, out.logits, out.noise)
