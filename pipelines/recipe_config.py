"""A recipe's config: one YAML file (pipelines/recipes/NAME.yaml) validated as a whole at load.

Cross-section checks live here (one seq_len for data and schedule); each section validates itself.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from llada_core.config import StrictModel, load_config, named_yaml
from llada_core.parallel.layout import ParallelLayout
from llada_core.schedule import WSDConfig

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class PretrainData(StrictModel):
    input: str = "stdlib"  # file, dir, glob, s3:// URI or `stdlib` (the embedded corpus)
    tokenizer: str | None = None  # an HF tokenizer dir / tokenizer.json; None = train a BPE
    vocab_size: int = Field(4096, ge=264)
    add_mask_token: str | None = None
    val_fraction: float = Field(0.02, ge=0.0, lt=1.0)


class InstructData(StrictModel):
    synthetic_tasks: int = Field(4000, ge=8)  # embedded task generator; ignored when inputs are given
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    sft_input: str | None = None  # user SFT jsonl/parquet (prompt/response or messages)
    dpo_input: str | None = None  # user DPO jsonl/parquet (prompt/chosen/rejected)
    max_len: int = Field(128, ge=4)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)


class Training(StrictModel):
    """Shared by every training node of the recipe."""

    model: str = "tiny"  # preset of the AR base trained from scratch (ignored with base.hf_checkpoint)
    model_overrides: list[str] = []
    max_failures: int = Field(2, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    checkpoint_every: int = Field(50, ge=1)


class Base(StrictModel):
    hf_checkpoint: str | None = None  # an AR HF checkpoint dir to import; None = AR-pretrain the preset
    steps: int = Field(100, ge=1)
    micro_batch: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)


class CPT(StrictModel):
    micro_batch: int = Field(8, ge=1)  # tokens per step = micro_batch * grad_accum * dp * seq_len
    grad_accum: int = Field(1, ge=1)
    merge_top_k: int = Field(3, ge=1)  # after decay: average the k best decay checkpoints (val ELBO)
    candidates_every: int = Field(10, ge=1)  # decay-phase checkpoint (and merge candidate) interval


class Finetune(StrictModel):
    steps: int = Field(ge=1)
    micro_batch: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    block_size: int = Field(32, ge=1)


class Evaluation(StrictModel):
    n_tasks: int = Field(100, ge=1)
    threshold: float = Field(0.95, ge=0, le=1)
    sweep: list[float] = [0.5, 0.7, 0.9, 0.95]
    block_size: int = Field(32, ge=1)
    max_rows: int = Field(32, ge=1)


class RecipeConfig(StrictModel):
    name: str
    workdir: str = "work"
    store: str | None = None  # run store (local dir or s3://); default WORKDIR/store
    artifact_root: str | None = None  # node outputs; default WORKDIR/artifacts
    tracking_uri: str | None = None  # MLflow; default $MLFLOW_TRACKING_URI or sqlite in WORKDIR
    experiment: str | None = None
    seed: int = 0
    seq_len: int = Field(ge=2)
    num_workers: int = Field(2, ge=1)  # Ray Data tokenizer actors
    data: PretrainData = PretrainData()
    instruct: InstructData = InstructData()
    schedule: WSDConfig
    parallel: ParallelLayout = ParallelLayout()
    training: Training = Training()
    base: Base = Base()
    cpt: CPT = CPT()
    sft: Finetune = Finetune(steps=100)
    cap: Finetune = Finetune(steps=50)
    dpo: Finetune = Finetune(steps=50, lr=2e-4, micro_batch=8)
    eval: Evaluation = Evaluation()

    @model_validator(mode="before")
    @classmethod
    def _share_seq_len(cls, values):
        if isinstance(values, dict) and isinstance(values.get("schedule"), dict):
            schedule = values["schedule"]
            if "seq_len" in schedule and schedule["seq_len"] != values.get("seq_len"):
                raise ValueError(f"schedule.seq_len: {schedule['seq_len']} differs from seq_len={values.get('seq_len')}")
            values = dict(values, schedule=dict(schedule, seq_len=values.get("seq_len")))
        return values


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return named_yaml(RECIPES_DIR, name_or_path, "recipe")


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> RecipeConfig:
    return load_config(RecipeConfig, recipe_path(name_or_path), overrides=overrides)
