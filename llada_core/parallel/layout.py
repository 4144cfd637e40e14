"""The parallel layout of a worker group: tensor / pipeline / context / expert / data parallel sizes.

megatron-core's arithmetic: dense layers use world = tp * pp * cp * dp; MoE layers regroup the same
ranks per pipeline stage as ep * etp * edp (etp = expert tensor parallel, default tp). Everything
that can be checked without the model is checked here, at config load; `check_model` adds the
checks that need the model shape (layers per pipeline stage, experts per EP rank, heads per TP rank).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from llada_core.config import StrictModel


class ParallelLayout(StrictModel):
    world_size: int = Field(1, ge=1)
    tp: int = Field(1, ge=1)  # tensor parallel
    pp: int = Field(1, ge=1)  # pipeline parallel
    cp: int = Field(1, ge=1)  # context parallel
    ep: int = Field(1, ge=1)  # expert parallel
    etp: int | None = Field(None, ge=1)  # expert tensor parallel; None = tp
    sequence_parallel: bool | None = None  # None = on whenever tp > 1 (MoE + TP requires it)

    @model_validator(mode="after")
    def _check(self):
        model_ranks = self.tp * self.pp * self.cp
        if self.world_size % model_ranks:
            raise ValueError(
                f"world_size: tp*pp*cp = {self.tp}*{self.pp}*{self.cp} = {model_ranks} "
                f"does not divide world_size={self.world_size}"
            )
        per_stage = self.world_size // self.pp
        expert_ranks = self.ep * self.expert_tp
        if per_stage % expert_ranks:
            raise ValueError(
                f"ep: ep*etp = {self.ep}*{self.expert_tp} = {expert_ranks} does not divide the {per_stage} ranks "
                f"of a pipeline stage (world_size={self.world_size} / pp={self.pp})"
            )
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel: needs tp > 1")
        return self

    @property
    def expert_tp(self) -> int:
        return self.etp if self.etp is not None else self.tp

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp * self.cp)

    @property
    def use_sequence_parallel(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else self.sequence_parallel

    def check_model(self, num_layers: int, num_experts: int, num_heads: int, num_kv_heads: int,
                    vocab_size: int | None = None) -> None:
        """Checks that need the model shape; raises ValueError naming the value."""
        if vocab_size is not None and vocab_size % self.tp:
            raise ValueError(f"vocab_size={vocab_size} is not divisible by tp={self.tp} (pad the vocabulary)")
        if num_layers % self.pp:
            raise ValueError(f"num_layers={num_layers} is not divisible by pp={self.pp}")
        if num_experts and num_experts % self.ep:
            raise ValueError(f"num_experts={num_experts} is not divisible by ep={self.ep}")
        for name, n in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
            if n % self.tp:
                raise ValueError(f"{name}={n} is not divisible by tp={self.tp}")
