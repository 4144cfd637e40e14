"""What an objective declares, once (the idea of torchtitan's loss builders).

An objective is a config (one member of the `kind`-discriminated union of the registry), how the rows
of a dataset become a batch, the model inputs it builds from a batch and its loss from the logits.
The trainer, the pipeline-parallel schedule and `llada plan` ask an objective these things and never
branch on its name: the first pipeline stage gets `model_inputs(batch)`, the last computes
`loss(logits, batch)`, and without pipeline stages `forward_loss` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field
from torch import Tensor

from llada_core.config import StrictModel
from llada_core.objectives.common import LossOutput


class BlockConfig(StrictModel):
    """The knob every block-diffusion objective has."""

    block_size: int = Field(32, ge=1)  # L_B (CPT: when no WSD schedule drives it)


@dataclass(frozen=True)
class StepContext:
    """What a batch may depend on besides its rows."""

    mask_id: int
    pad_id: int
    eos_id: int
    seed: int
    step: int  # optimizer steps done before this one
    positions: list[int]  # global sample positions of the rows: each row's noise is seeded by its own
    block_size: int | None = None  # the WSD schedule's block size at this step, when a schedule drives it
    vocab_size: int | None = None  # the tokenizer's: the T2T stream's random tokens are drawn below it


class Objective:
    kind: ClassVar[str]
    Config: ClassVar[type[StrictModel]]
    data_kind: ClassVar[str]  # the dataset manifest's `kind` it reads: pretrain | sft | dpo
    needs_reference: ClassVar[bool] = False  # a frozen reference model beside the policy
    pipeline_parallel: ClassVar[bool] = True  # one model forward per micro-batch: 1F1B can run it

    def __init__(self, cfg: StrictModel):
        self.cfg = cfg

    def batch(self, rows: list[dict], ctx: StepContext) -> Any:
        raise NotImplementedError

    def model_inputs(self, batch) -> dict[str, Tensor]:
        """Keyword arguments of `LladaModel(input_ids, position_ids, allowed, mask_noise=None)`."""
        raise NotImplementedError

    def loss(self, logits: Tensor, batch) -> LossOutput:
        raise NotImplementedError

    def forward_loss(self, model, reference, batch) -> LossOutput:
        return self.loss(model(**self.model_inputs(batch)), batch)

    def real_tokens(self, rows: list[dict]) -> int:
        """Non-padding tokens of the rows (tokens/s counts these)."""
        raise NotImplementedError

    def input_length(self, seq_len: int, block_size: int | None) -> int:
        """Tokens per row the model sees (memory planning): [x_t ; x_0] is 2L unless one block is the sequence."""
        block = block_size or getattr(self.cfg, "block_size", seq_len)
        return seq_len if block >= seq_len else 2 * seq_len
