"""Autoregressive cross-entropy (block size 1 in the clean sense): the base model's objective.

Shifted labels: the logit at position i predicts token i+1, under the causal mask AND same
document. A target in another document than its predictor (a document boundary) or padding is
not in the loss. Normalised by the number of predicted tokens.
"""

from __future__ import annotations

from torch import Tensor

from llada_core import masks
from llada_core.objectives.common import LossOutput, positions, token_nll


def ar_loss(model, x0: Tensor, doc_ids: Tensor) -> LossOutput:
    B, L = x0.shape
    logits = model(x0, positions(B, L, x0.device), masks.causal_mask(doc_ids))
    nll = token_nll(logits[:, :-1], x0[:, 1:])
    keep = (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] >= 0)
    loss = (nll * keep).sum() / keep.sum().clamp(min=1)
    return LossOutput(loss, {"tokens": int(keep.sum())}, logits)
