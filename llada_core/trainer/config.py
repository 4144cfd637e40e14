"""A training stage as data: objective, data, schedule, parallel layout, optimisation.

Every stage of the recipe (AR base, CPT warm-up / stable / decay, SFT, CAP, DPO) is one
`StageConfig`; the shared trainer (llada_core.trainer.loop) runs any of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from llada_core.checkpoint import read_checkpoint_header
from llada_core.config import StrictModel
from llada_core.model.config import ModelConfig, load_preset, pad_vocab
from llada_core.parallel.layout import ParallelLayout
from llada_core.schedule import WSDConfig

Objective = Literal["ar", "cpt", "sft", "cap", "dpo"]


class OptimConfig(StrictModel):
    lr: float = Field(3e-4, gt=0)  # peak lr when no WSD schedule drives it
    min_lr: float = Field(3e-5, ge=0)
    warmup_steps: int = Field(0, ge=0)
    decay: Literal["constant", "cosine", "linear"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 = off


class ObjectiveConfig(StrictModel):
    block_size: int = Field(32, ge=1)  # SFT / CAP / DPO, and CPT when no WSD schedule is given
    alpha_min: float = Field(0.3, gt=0, le=1)  # SFT mask-ratio bandwidth
    alpha_max: float = Field(0.8, gt=0, le=1)
    complementary_masking: bool = True
    cap_lambda: float = Field(2.0, ge=0)
    dpo_beta: float = Field(0.1, gt=0)
    mask_noise_std: float = Field(0.0, ge=0)  # early-CPT noise on [MASK] embeddings
    mask_noise_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min: {self.alpha_min} exceeds alpha_max={self.alpha_max}")
        return self


class StageConfig(StrictModel):
    @property
    def dtype(self) -> torch.dtype:
        use_bf16 = self.precision == "bf16" or (self.precision == "auto" and torch.cuda.is_available())
        return torch.bfloat16 if use_bf16 else torch.float32

    name: str
    objective: Objective
    data: str  # a dataset prepared by the data stage (local or s3://)
    split: str = "train"
    model: str = "tiny"  # preset name, used when init_checkpoint is None
    model_overrides: list[str] = []
    init_checkpoint: str | None = None  # consolidated checkpoint (import-hf, or a previous stage)
    reference_checkpoint: str | None = None  # DPO: the frozen reference model
    layout: ParallelLayout = ParallelLayout()
    micro_batch: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    steps: int = Field(ge=1)
    schedule: WSDConfig | None = None  # CPT: block size + lr from the WSD schedule
    schedule_offset_tokens: int = Field(0, ge=0)  # where this stage starts on the schedule's token axis
    objective_cfg: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 with CUDA, fp32 on CPU
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.precision == "bf16" and not torch.cuda.is_available():
            raise ValueError("precision: bf16 training needs a GPU (megatron's mixed-precision optimizer is CUDA-only); use fp32 or auto")
        if self.layout.pp > 1 and self.objective == "dpo":
            raise ValueError(f"layout: pipeline parallelism (pp={self.layout.pp}) is not implemented for DPO "
                             "(policy and reference run two forwards each per micro-batch)")
        if self.objective == "dpo" and not self.reference_checkpoint:
            raise ValueError("reference_checkpoint: DPO needs the frozen reference model's checkpoint")
        return self


def resolve_model_config(cfg: StageConfig, manifest: dict) -> ModelConfig:
    """The stage's model shape: the init checkpoint's (whose tokenizer must be the dataset's), or the
    preset with the dataset tokenizer's vocabulary, padded. Reads no tensors."""
    if cfg.init_checkpoint:
        model_cfg, meta = read_checkpoint_header(cfg.init_checkpoint)
        if meta.get("tokenizer_digest") != manifest["tokenizer"]["digest"]:
            raise ValueError(f"{cfg.init_checkpoint}: its tokenizer differs from the dataset's ({cfg.data})")
        return model_cfg
    vocab = pad_vocab(manifest["tokenizer"]["vocab_size"])
    return load_preset(cfg.model, [f"vocab_size={vocab}", *cfg.model_overrides])
