"""Host memory of the processes that hand a model from stage to stage (an estimate to size the
cluster and to request Ray resources, not a measurement; bench/handoff_memory.py measures it).

Every figure is what one process holds at its peak, by what the code reads at a time:
  training driver: consolidates the final dist-checkpoint: one DCP read (consolidate.READ_BYTES, or one
    global tensor if larger: a layer's stacked experts) + the tensor being written (parts are
    written tensor by tensor: llada_core.safetensors_parts);
  training rank, loading: its own slices of the init checkpoint, in the checkpoint dtype;
  training rank, saving: megatron's dist-checkpoint save first copies every tensor the rank saves to
    host memory (`preload_tensors`): its weights + fp32 main weights and Adam m, v (12 B; 8 B in
    fp32 training, whose weights are the main weights);
  merge: ranks each candidate by validation ELBO (one whole model, fp32 on CPU, loaded tensor by
    tensor) then averages k tensors at a time in fp64 into one output part;
  eval: one whole model (fp32) + the fp32 logits of one ELBO batch;
  export / import: one tensor in, one (converted) tensor out.
Each adds RUNTIME_BYTES (Python, torch, megatron-core, Ray worker).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from llada_core.consolidate import READ_BYTES
from llada_core.merge import CHUNK_BYTES
from llada_core.model.config import ModelConfig, load_preset, pad_vocab
from llada_core.model.hf_io import expected_shapes
from llada_core.parallel.layout import ParallelLayout

GiB = 1 << 30
RUNTIME_BYTES = 1 << 30  # measured: ~0.6-0.8 GiB RSS after importing torch + megatron-core + ray
EVAL_WIDTH = 4  # the eval / merge process runs the model in fp32 on CPU
ELBO_BATCH = 8  # rows per ELBO forward (llada_core.evaluate.elbo_perplexity)


def recipe_model(cfg) -> ModelConfig:
    """The model shape a recipe trains: a local HF checkpoint's config.json, else the preset it names
    (an s3:// checkpoint is not read to plan: `training.model` names the shape import-hf will give)."""
    from pathlib import Path

    from llada_core.model.hf_config import from_hf_config

    hf = cfg.base.hf_checkpoint
    config = Path(hf or "", "config.json")
    if hf and config.is_file():
        return from_hf_config(json.loads(config.read_text()))
    if hf:
        return load_preset(cfg.training.model, list(cfg.training.model_overrides))
    vocab = pad_vocab(cfg.data.tokenizer.vocab_size)
    return load_preset(cfg.training.model, [f"vocab_size={vocab}", *cfg.training.model_overrides])


@dataclass(frozen=True)
class HandoffMemory:
    """Peak bytes per process, by role."""

    train_driver: int
    train_rank_load: int
    train_rank_save: int
    merge: int
    eval: int
    export: int
    import_hf: int

    def of(self, stage: str) -> int | None:
        """The figure for a recipe stage (llada_recipe.build's node stages)."""
        return {"merge": self.merge, "evaluate": self.eval, "export_hf": self.export, "import_hf": self.import_hf,
                "train": self.train_driver, "train_with_candidates": self.train_driver}.get(stage)


def largest_tensor(cfg: ModelConfig) -> int:
    """Elements of the largest consolidated tensor (one expert's weight, not a layer's stack)."""
    return max(math.prod(shape) for shape in expected_shapes(cfg).values())


def stacked_experts(cfg: ModelConfig) -> int:
    """Elements of one layer's experts in a training checkpoint (megatron saves them as one tensor)."""
    return cfg.num_experts * 2 * cfg.moe_ffn_hidden_size * cfg.hidden_size


def rank_shard_params(cfg: ModelConfig, layout: ParallelLayout) -> float:
    from llada_recipe.plan import expert_params

    experts = expert_params(cfg)
    dense = cfg.total_params() - experts
    return experts / (layout.ep * layout.expert_tp * layout.pp) + dense / (layout.tp * layout.pp)


def checkpoint_width(recipe) -> int:
    """Bytes per weight of the recipe's consolidated checkpoints: its training dtype (bf16 on GPUs)."""
    precision = recipe.cpt.precision
    return 2 if precision == "bf16" or (precision == "auto" and recipe.training.use_gpu) else 4


def handoff_memory(cfg: ModelConfig, layout: ParallelLayout, seq_len: int, width: int = 2, merge_k: int = 3,
                   eval_rows: int = ELBO_BATCH) -> HandoffMemory:
    """`width`: bytes per weight in the consolidated checkpoint (2 for bf16 training / bf16 imports)."""
    tensor = largest_tensor(cfg) * max(width, EVAL_WIDTH)
    model = cfg.total_params() * EVAL_WIDTH
    stored = cfg.total_params() * width  # a read batch never exceeds the model
    one_read = max(min(READ_BYTES, stored), stacked_experts(cfg) * width)
    logits = eval_rows * 2 * seq_len * cfg.vocab_size * 4  # block diffusion: [x_t ; x_0]
    averaging = largest_tensor(cfg) * width + (merge_k + 2) * CHUNK_BYTES  # output tensor + k chunks + fp64 sum
    return HandoffMemory(
        train_driver=RUNTIME_BYTES + one_read + tensor,
        train_rank_load=RUNTIME_BYTES + int(rank_shard_params(cfg, layout) * width),
        train_rank_save=RUNTIME_BYTES + int(rank_shard_params(cfg, layout) * (width + (12 if width == 2 else 8))),
        merge=RUNTIME_BYTES + max(model + tensor + logits, averaging),
        eval=RUNTIME_BYTES + model + tensor + logits,
        export=RUNTIME_BYTES + 2 * tensor,
        import_hf=RUNTIME_BYTES + 2 * tensor)
