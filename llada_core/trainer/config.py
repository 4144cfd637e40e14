"""A training stage as data: objective, data, schedule, parallel layout, optimisation.

Every stage of the recipe (AR base, CPT warm-up / stable / decay, SFT, CAP, DPO) is one
`TrainingConfig`; the shared trainer (llada_core.trainer.loop) runs any of them.
"""

from __future__ import annotations

import json
from typing import Literal

import torch
from pydantic import Field, model_validator

from llada_core.checkpoint import read_checkpoint_header
from llada_core.config import ConfigError, StrictModel
from llada_core.model.config import ModelConfig, load_preset, pad_vocab, preset_path
from llada_core.objectives.registry import ObjectiveConfig, objective_class
from llada_core.parallel.layout import ParallelLayout
from llada_core.schedule import WSDConfig


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


class TrainingSettings(StrictModel):
    """How a training stage trains: what a recipe section sets. The recipe builder adds the wiring
    (TrainingConfig: name, data, checkpoints, layout, seed)."""

    micro_batch: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    optim: OptimConfig = OptimConfig()
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 with CUDA, fp32 without (training_dtype)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class TrainingConfig(TrainingSettings):
    name: str
    objective: ObjectiveConfig  # {kind: ar | cpt | sft | cap | dpo, ...that objective's knobs}
    data: str  # a dataset prepared by the data stage (local or s3://)
    split: str = "train"
    model: str = "tiny"  # preset name, used when init_checkpoint is None
    model_overrides: list[str] = []
    init_checkpoint: str | None = None  # consolidated checkpoint (import-hf, or a previous stage)
    # a previous node's training checkpoint (its `state`): weights, Adam moments, data position go on
    init_state: str | None = None
    reference_checkpoint: str | None = None  # DPO: the frozen reference model
    layout: ParallelLayout = ParallelLayout()
    steps: int = Field(ge=1)
    schedule: WSDConfig | None = None  # CPT: block size + lr from the WSD schedule
    schedule_offset_tokens: int = Field(0, ge=0)  # where this stage starts on the schedule's token axis
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.init_checkpoint and self.init_state:
            raise ValueError("init_state: give init_checkpoint (weights) or init_state (a training checkpoint "
                             "to continue), not both")
        if not (self.init_checkpoint or self.init_state):  # an unknown preset: found here, before the data nodes run
            try:
                preset_path(self.model)
            except ConfigError as exc:
                raise ValueError(f"model: {exc}") from None
        objective = objective_class(self.objective)
        if self.layout.pp > 1 and not objective.pipeline_parallel:
            raise ValueError(f"layout: pipeline parallelism (pp={self.layout.pp}) is not implemented for "
                             f"{objective.kind.upper()} (more than one model forward per micro-batch)")
        if objective.needs_reference and not self.reference_checkpoint:
            raise ValueError(f"reference_checkpoint: {objective.kind.upper()} needs the frozen reference "
                             "model's checkpoint")
        return self


class LaunchConfig(StrictModel):
    """How a stage's Ray Train worker group is launched."""

    max_failures: int = Field(2, ge=0)  # worker-group restarts from the latest registered checkpoint
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    # for nodes to appear (autoscaling), and (at least 60 s) for resources other jobs hold to free up,
    # before the node fails naming what it asked for
    wait_for_resources_s: float = Field(0.0, ge=0)


def check_dataset(cfg: TrainingConfig, manifest: dict) -> None:
    """The dataset fits the objective: its kind, and (packed rows) every block size divides its rows.
    Checked on the driver before any worker starts; raises DataError naming the dataset."""
    from llada_core.data.sources import DataError

    objective = objective_class(cfg.objective)
    kind = manifest.get("kind")
    if kind != objective.data_kind:
        command = "prepare" if objective.data_kind == "pretrain" else f"prepare-{objective.data_kind}"
        raise DataError(f"{cfg.data}: a {kind!r} dataset, but objective {objective.kind!r} trains on "
                        f"{objective.data_kind!r} data (made by `llada data {command}`)")
    seq_len = manifest.get("seq_len")
    if objective.data_kind != "pretrain" or not seq_len:
        return
    if cfg.schedule is not None:
        if cfg.schedule.seq_len != seq_len:
            raise DataError(f"{cfg.data}: rows of {seq_len} tokens, but the WSD schedule is for seq_len="
                            f"{cfg.schedule.seq_len}")
        return
    block = getattr(cfg.objective, "block_size", None)
    if block is not None and (block > seq_len or seq_len % block):
        raise DataError(f"{cfg.data}: objective.block_size={block} does not divide its rows of {seq_len} tokens")


STATE_FILE = "trainer_state.json"  # in every training checkpoint: step, samples, offsets, tokenizer digest
MODEL_CONFIG_FILE = "model_config.json"  # beside the shards: a next node continuing from them builds this model


def resolve_model_config(cfg: TrainingConfig, manifest: dict) -> ModelConfig:
    """The stage's model shape: the init checkpoint's (whose tokenizer must be the dataset's), or the
    preset with the dataset tokenizer's vocabulary, padded. Reads no tensors."""
    if cfg.init_state:
        from llada_core import storage

        fs, base = storage.resolve(cfg.init_state)
        try:
            model_cfg = ModelConfig.model_validate_json(storage.read_bytes(fs, f"{base}/{MODEL_CONFIG_FILE}"))
            meta = json.loads(storage.read_bytes(fs, f"{base}/{STATE_FILE}"))
        except FileNotFoundError:
            raise ValueError(f"init_state: {cfg.init_state} is not a training checkpoint with "
                             f"{MODEL_CONFIG_FILE}") from None
        if meta.get("tokenizer_digest") != manifest["tokenizer"]["digest"]:
            raise ValueError(f"{cfg.init_state}: its tokenizer differs from the dataset's ({cfg.data})")
        return model_cfg
    if cfg.init_checkpoint:
        model_cfg, meta = read_checkpoint_header(cfg.init_checkpoint)
        if meta.get("tokenizer_digest") != manifest["tokenizer"]["digest"]:
            raise ValueError(f"{cfg.init_checkpoint}: its tokenizer differs from the dataset's ({cfg.data})")
        return model_cfg
    vocab = pad_vocab(manifest["tokenizer"]["vocab_size"])
    return load_preset(cfg.model, [f"vocab_size={vocab}", *cfg.model_overrides])


def training_dtype(cfg: TrainingConfig) -> torch.dtype:
    """The training dtype on THIS machine: decided where the stage runs, never at config load (a
    driver without CUDA validates a GPU recipe the same as its GPU workers do)."""
    if cfg.precision == "bf16" and not torch.cuda.is_available():
        raise ValueError("precision: bf16 training needs a GPU (megatron's mixed-precision optimizer is CUDA-only); "
                         "use fp32 or auto")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())
    return torch.bfloat16 if use_bf16 else torch.float32
