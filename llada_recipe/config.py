"""A recipe's config: one YAML file (llada_recipe/recipes/NAME.yaml) validated as a whole at load.

Cross-section checks live here (one seq_len for data and schedule); each section validates itself.
A section reuses the config of the stage it feeds (its settings part: the knobs a user sets, with
their one default); the recipe builder (llada_recipe.build) adds the wiring: paths, names, layout, seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llada_core.config import ConfigError, StrictModel, load_config, named_yaml
from llada_core.model.hf_formats import get_format
from llada_core.objectives.block_diffusion import CPTConfig
from llada_core.objectives.cap import CAPConfig
from llada_core.objectives.dpo import DPOConfig
from llada_core.objectives.editing import EditConfig
from llada_core.objectives.sft import SFTConfig
from llada_core.parallel.layout import ParallelLayout
from llada_core.schedule import WSDConfig
from llada_core.trainer.config import LaunchConfig, TrainingSettings
from stages.llada import EvalSettings, MergeSettings, TaskSetSettings
from stages.prepare_data import PretrainDataSettings
from stages.prepare_instruct import InstructDataSettings

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class PretrainData(PretrainDataSettings):
    input: str = "stdlib"  # file, dir, glob, s3:// URI or `stdlib` (the embedded corpus)


class InstructData(InstructDataSettings):
    tasks: TaskSetSettings = TaskSetSettings()  # the embedded task generator; unused when both inputs are given
    sft_input: str | None = None  # user SFT jsonl/parquet (prompt/response or messages)
    dpo_input: str | None = None  # user DPO jsonl/parquet (prompt/chosen/rejected)


class Training(LaunchConfig):
    """Shared by every training node of the recipe."""

    model: str = "tiny"  # preset of the AR base trained from scratch (ignored with base.hf_checkpoint)
    model_overrides: list[str] = []


class Base(TrainingSettings):
    # an HF checkpoint dir to import (an AR model, or with start_at a diffusion one); None = AR-pretrain the preset
    hf_checkpoint: str | None = None
    steps: int = Field(100, ge=1)


class CPT(TrainingSettings):
    """Every CPT phase node; tokens per step = micro_batch * grad_accum * dp * seq_len, steps and lr
    from the schedule."""

    objective: CPTConfig = CPTConfig()
    candidates_every: int = Field(10, ge=1)  # decay-phase checkpoint (and merge candidate) interval
    # stable / decay continue the previous phase's Adam moments and data position (one WSD trajectory);
    # false: each phase starts a fresh Adam from the previous phase's weights
    carry_state: bool = True


class Finetune(TrainingSettings):
    steps: int = Field(ge=1)


class SFTStage(Finetune):
    objective: SFTConfig = SFTConfig()


class CAPStage(Finetune):
    objective: CAPConfig = CAPConfig()
    carry_state: bool = False  # true: continue SFT's Adam moments and data position instead of a fresh Adam


class DPOStage(Finetune):
    objective: DPOConfig = DPOConfig()


class Export(StrictModel):
    """The final model's serving format (llada_core.model.hf_formats; None: the AR layout of the
    model's family); its generation config gets the eval's decoding block and threshold. Each run's
    export is a new version of `registered_model` in the MLflow Model Registry."""

    format: str | None = None
    # llada2 / sdar for a tokenizer whose [MASK] is not the server's fixed id: the export grows the
    # vocabulary and moves the [MASK] rows there (llada_core/model/mask_relocation.py)
    relocate_mask: bool = False
    registered_model: str | None = None  # None: "llada-<recipe name>"

    @field_validator("format")
    @classmethod
    def _known(cls, value):
        if value is not None:
            get_format(value)  # an unknown name fails at load, naming the choices
        return value


class Hardware(StrictModel):
    """What one machine of the cluster holds; `llada plan` refuses a recipe that does not fit it (unset:
    not checked). Ray places each node's task by the memory the recipe requests for it."""

    gpu_memory_gib: float | None = Field(None, gt=0)  # per GPU
    host_memory_gib: float | None = Field(None, gt=0)  # the largest host a non-training node may run on
    gpus_per_host: int = Field(8, ge=1)


class RecipeConfig(StrictModel):
    name: str
    workdir: str = "work"
    store: str | None = None  # run store (local dir or s3://); default WORKDIR/store
    artifact_root: str | None = None  # node outputs; default WORKDIR/artifacts
    tracking_uri: str | None = None  # MLflow; default $MLFLOW_TRACKING_URI or sqlite in WORKDIR
    experiment: str | None = None
    ray: Literal["auto", "cluster"] = "auto"  # cluster: never start a local Ray (implied by training.use_gpu)
    seed: int = 0
    # where training starts: "cpt" converts base (AR) into a diffusion LM; "sft" / "cap" / "dpo" start that
    # stage from base.hf_checkpoint, an imported diffusion model (e.g. a released LLaDA2.0), with no CPT
    start_at: Literal["cpt", "sft", "cap", "dpo"] = "cpt"
    seq_len: int = Field(ge=2)
    num_workers: int = Field(2, ge=1)  # Ray Data tokenizer actors
    data: PretrainData = PretrainData()
    instruct: InstructData = InstructData()
    schedule: WSDConfig
    parallel: ParallelLayout = ParallelLayout()
    training: Training = Training()
    base: Base = Base()
    cpt: CPT = CPT()
    merge: MergeSettings = MergeSettings()  # top-k merge of the decay checkpoints
    sft: SFTStage = SFTStage(steps=100)
    cap: CAPStage = CAPStage(steps=50)
    dpo: DPOStage = DPOStage(steps=50)
    eval: EvalSettings = EvalSettings()
    # token editing (LLaDA2.1): null = off; set (e.g. {ratio: 0.1}) = the T2T stream in every CPT phase,
    # SFT and CAP (llada_core/objectives/editing.py), and the eval also decodes in eval.edit_modes
    token_editing: EditConfig | None = None
    export: Export = Export()
    hardware: Hardware = Hardware()

    @property
    def needs_cluster(self) -> bool:
        return self.ray == "cluster" or self.training.use_gpu

    @model_validator(mode="before")
    @classmethod
    def _share_seq_len(cls, values):
        if isinstance(values, dict) and isinstance(values.get("schedule"), dict):
            schedule = values["schedule"]
            if "seq_len" in schedule and schedule["seq_len"] != values.get("seq_len"):
                raise ValueError(f"schedule.seq_len: {schedule['seq_len']} differs from "
                                 f"seq_len={values.get('seq_len')}")
            values = dict(values, schedule=dict(schedule, seq_len=values.get("seq_len")))
        return values

    @model_validator(mode="after")
    def _one_editing_switch(self):
        set_here = [n for n in ("cpt", "sft", "cap") if getattr(self, n).objective.edit != EditConfig()]
        if set_here:
            raise ValueError(f"{set_here[0]}.objective.edit: token editing is one switch for the whole recipe: "
                             "set token_editing instead")
        return self

    @model_validator(mode="after")
    def _exportable(self):
        """Known now rather than after training: the model fits the format, and a tokenizer the recipe
        trains ([MASK] at id 3) has its [MASK] moved for a diffusion format (an imported model and
        tokenizer are checked again when the base is imported)."""
        from llada_core.model.hf_config import CheckpointError
        from llada_core.model.hf_formats import hf_config
        from llada_recipe.memory import recipe_model

        fmt = get_format(self.export.format) if self.export.format else None
        hf = self.base.hf_checkpoint
        known = not hf or Path(hf, "config.json").is_file()  # an s3:// base is checked when it is imported
        try:
            model = recipe_model(self) if fmt and known else None
        except ConfigError:  # a bad preset or override: the node that builds the model names it
            model = None
        try:
            if model:
                hf_config(model, fmt)
        except CheckpointError as exc:
            raise ValueError(f"export.format: {exc}") from None
        trained = self.data.tokenizer.train and not self.base.hf_checkpoint  # an import brings its own
        if fmt and fmt.mask_id is not None and trained and not self.export.relocate_mask:
            raise ValueError(f"export.relocate_mask: servers feed export.format={fmt.name} [MASK] = id {fmt.mask_id}, "
                             "and the tokenizer this recipe trains has it at id 3: set export.relocate_mask: true")
        if self.export.relocate_mask and not (fmt and fmt.mask_id is not None):
            raise ValueError(f"export.relocate_mask: export.format={self.export.format} has no fixed [MASK] id "
                             "(only llada2 / sdar)")
        return self

    @model_validator(mode="after")
    def _start_from_a_checkpoint(self):
        if self.start_at != "cpt" and not self.base.hf_checkpoint:
            raise ValueError(f"start_at={self.start_at!r} starts from an imported diffusion model: "
                             "set base.hf_checkpoint")
        return self


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return named_yaml(RECIPES_DIR, name_or_path, "recipe")


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> RecipeConfig:
    return load_config(RecipeConfig, recipe_path(name_or_path), overrides=overrides)
