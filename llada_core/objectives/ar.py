"""Autoregressive cross-entropy (block size 1 in the clean sense): the base model's objective.

Shifted labels: the logit at position i predicts token i+1, under the causal mask AND same
document. A target in another document than its predictor (a document boundary) or padding is
not in the loss. Normalised by the number of predicted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from llada_core import masks
from llada_core.config import StrictModel
from llada_core.objectives.base import Objective, StepContext
from llada_core.objectives.common import LossOutput, packed_tensors, packed_tokens, positions, token_nll


class ARConfig(StrictModel):
    kind: Literal["ar"] = "ar"


@dataclass
class PackedBatch:
    x0: Tensor  # [B, L]
    doc_ids: Tensor  # [B, L], -1 = padding


def ar_inputs(batch: PackedBatch) -> dict:
    B, L = batch.x0.shape
    return {"input_ids": batch.x0, "position_ids": positions(B, L, batch.x0.device),
            "allowed": masks.causal_mask(batch.doc_ids)}


def ar_from_logits(logits: Tensor, batch: PackedBatch) -> LossOutput:
    x0, doc_ids = batch.x0, batch.doc_ids
    nll = token_nll(logits[:, :-1], x0[:, 1:])
    keep = (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] >= 0)
    loss = (nll * keep).sum() / keep.sum().clamp(min=1)
    return LossOutput(loss, {"tokens": int(keep.sum())}, logits)


def ar_loss(model, x0: Tensor, doc_ids: Tensor) -> LossOutput:
    batch = PackedBatch(x0, doc_ids)
    return ar_from_logits(model(**ar_inputs(batch)), batch)


class AR(Objective):
    kind, Config, data_kind = "ar", ARConfig, "pretrain"

    def batch(self, rows: list[dict], ctx: StepContext) -> PackedBatch:
        return PackedBatch(*packed_tensors(rows))

    def model_inputs(self, batch: PackedBatch) -> dict:
        return ar_inputs(batch)

    def loss(self, logits: Tensor, batch: PackedBatch) -> LossOutput:
        return ar_from_logits(logits, batch)

    def real_tokens(self, rows: list[dict]) -> int:
        return packed_tokens(rows)

    def input_length(self, seq_len: int, block_size: int | None) -> int:
        return seq_len


OBJECTIVE = AR
