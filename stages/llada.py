"""The recipe's stages as DAG nodes (pipelines/dag.py). Each wraps a task or llada_core entry point:
its config is that task's config, `out` is the node's output directory, and it returns its outputs.
Stages are re-runnable: a node re-run after an interruption replaces its partial outputs."""

from __future__ import annotations

import json

from pydantic import Field, field_validator, model_validator

from llada_core import storage
from llada_core.config import StrictModel
from llada_core.data.synthetic import ITEMS, check_drawable
from llada_core.objectives.sft import ResponseConfig
from llada_core.trainer.config import LaunchConfig, TrainingConfig
from pipelines.dag import Stage
from stages import prepare_data, prepare_instruct


class TaskSetSettings(StrictModel):
    """The built-in verifiable instruction problems (llada_core.data.synthetic)."""

    n: int = Field(4000, ge=8)  # distinct problems
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    items: tuple[int, int] = ITEMS  # answer length range (symbols), inclusive

    @model_validator(mode="after")
    def _drawable(self):
        check_drawable(self.n, self.items)
        return self


class MakeTasksConfig(TaskSetSettings):
    out: str
    seed: int = 0


def _make_tasks(cfg: MakeTasksConfig, ctx) -> dict:
    from llada_core.data.synthetic import write_task_files

    with storage.output_dir(cfg.out) as local:
        write_task_files(local, cfg.n, cfg.seed, cfg.eval_fraction, cfg.items)
    return {"tasks": cfg.out}


def _prepare_pretrain(cfg: prepare_data.PrepareDataConfig, ctx) -> dict:
    prepare_data.run(cfg.model_copy(update={"overwrite": True}))
    return {"dataset": cfg.out}


def _prepare_instruct(cfg: prepare_instruct.PrepareInstructConfig, ctx) -> dict:
    prepare_instruct.run(cfg.model_copy(update={"overwrite": True}))
    return {"dataset": cfg.out}


class TrainNodeConfig(LaunchConfig):
    training: TrainingConfig  # data / init_checkpoint / reference_checkpoint: upstream outputs
    out: str


def _train(cfg: TrainNodeConfig, ctx, candidates: bool = False) -> dict:
    """A Ray Train worker group under the run store; after an interruption the node's next attempt
    (same cache key -> same Ray Train run name) continues from the latest registered checkpoint."""
    from llada_core.trainer.ray_launch import run_training

    training = cfg.training.model_copy(update={"name": f"{ctx.node}-{ctx.cache_key[:12]}"})
    steps = []

    def on_metrics(step: int, metrics: dict) -> None:
        if not metrics.get("replayed"):  # trained in this attempt (replayed ones only fill logging gaps)
            steps.append(step)
        ctx.log_metrics(step, metrics)
        ctx.report_progress(step, cfg.training.steps, loss=metrics["loss"], tokens_per_s=metrics["tokens_per_s"])

    outs = {"checkpoint": storage.join(cfg.out, "checkpoint"), "state": storage.join(cfg.out, "state")}
    if candidates:
        outs["candidates"] = storage.join(cfg.out, "candidates")
    run_training(training, ctx.train_storage, max_failures=cfg.max_failures, use_gpu=cfg.use_gpu,
                 cpus_per_worker=cfg.cpus_per_worker, wait_for_resources_s=cfg.wait_for_resources_s,
                 on_metrics=on_metrics, progress=False,
                 export=outs["checkpoint"], candidates=outs.get("candidates"), state=outs["state"])
    ctx.info |= {"first_step": steps[0] if steps else None, "last_step": steps[-1] if steps else None}
    return outs


def _check_train(cfg: TrainNodeConfig) -> None:
    from llada_core.trainer.ray_launch import preflight

    preflight(cfg.training, cfg.use_gpu)


class MergeSettings(StrictModel):
    k: int = Field(3, ge=1)  # average the k best candidates by validation ELBO
    block_size: int = Field(32, ge=1)
    max_rows: int = Field(32, ge=1)


class MergeConfig(MergeSettings):
    candidates: str  # a directory of consolidated checkpoints (step-*)
    dataset: str  # pretraining dataset: the validation split ranks the candidates
    out: str


def _merge(cfg: MergeConfig, ctx) -> dict:
    """Top-k merge (recipe, after CPT): rank the candidates by validation ELBO perplexity."""
    from llada_core.evaluate import elbo_perplexity, load_model
    from llada_core.merge import merge_top_k

    scores = {}
    candidates = [p for p in storage.list_dirs(cfg.candidates) if p.rsplit("/", 1)[-1].startswith("step-")]
    for i, path in enumerate(candidates):
        model, _ = load_model(path)
        scores[path] = elbo_perplexity(model, cfg.dataset, "val", cfg.block_size, cfg.max_rows)
        del model  # one model in memory at a time (llada_recipe.memory)
        ctx.log_metrics(i + 1, {"candidate_val_ppl": scores[path]})
    out = storage.join(cfg.out, "checkpoint")
    storage.delete(out)
    meta = merge_top_k(scores, out, k=cfg.k)
    ctx.info |= {"merged_from": meta["merged_from"]}
    return {"checkpoint": out}


class EditMode(StrictModel):
    """A token-editing decoder setting (llada_core.sampler, LLaDA2.1's S / Q modes)."""

    threshold: float = Field(ge=0, le=1)  # tau_mask
    edit_threshold: float = Field(0.9, ge=0)  # tau_edit
    edit_steps: int = Field(16, ge=0)  # post-block editing steps


class EvalSettings(StrictModel):
    """What a recipe's `eval:` section sets."""

    n_tasks: int = Field(100, ge=1)
    threshold: float = Field(0.95, ge=0, le=1)
    sweep: list[float] = [0.5, 0.7, 0.9, 0.95]
    block_size: int = Field(32, ge=1)
    max_rows: int = Field(32, ge=1)
    # decoded when the recipe trains with token editing: speed = low tau_mask (editing repairs the
    # rash tokens), quality = conservative (editing only polishes). CHOICE: 0.5 / 0.8, tau_edit 0.9, 16
    # post-block steps (LLaDA2.1's public generate() defaults for the editing part)
    edit_modes: dict[str, EditMode] = {"speed": EditMode(threshold=0.5), "quality": EditMode(threshold=0.8)}


class EvalConfig(EvalSettings):
    models: dict[str, str]  # label -> consolidated checkpoint
    pretrain: str  # dataset: ELBO perplexity on its val split
    tasks: str  # directory with sft_eval.jsonl (held-out verifiable tasks)
    dpo: str  # dataset: preference accuracy on its val split
    pairs: ResponseConfig = ResponseConfig()  # DPO's block, noise band and EOS tail: preference as DPO trains it
    # task accuracy with the parallel decoder and, on the same model, one token per forward left to right
    decode_models: list[str] = ["merged", "sft", "cap", "dpo"]
    sweep_models: list[str] = ["sft", "cap", "dpo"]  # + the threshold sweep (accuracy vs TPF)
    preference_models: list[str] = ["cap", "dpo"]
    out: str


def model_metrics(r: dict) -> dict[str, dict[str, float]]:
    """One model's eval results as flat metrics, named alike in every run of every recipe, by the
    EvalConfig field naming the dataset they were measured on."""
    out, tasks = {"pretrain": {"elbo_ppl": r["elbo_ppl"]}}, {}
    if "tasks" in r:
        tasks |= {"task_accuracy": r["tasks"]["accuracy"], "tpf": r["tasks"]["tpf"],
                  "decode_tokens_per_s": r["tasks"]["tokens_per_s"]}
    if "one_token" in r:
        tasks |= {"one_token.task_accuracy": r["one_token"]["accuracy"],
                  "one_token.decode_tokens_per_s": r["one_token"]["tokens_per_s"]}
    for key in (k for k in r if k.startswith("edit_")):
        tasks |= {f"{key}.task_accuracy": r[key]["accuracy"], f"{key}.tpf": r[key]["tpf"],
                  f"{key}.decode_tokens_per_s": r[key]["tokens_per_s"]}
    if tasks:
        out["tasks"] = tasks
    if "preference_accuracy" in r:
        out["dpo"] = {"preference_accuracy": r["preference_accuracy"]}
    return out


def summary_metrics(label: str, r: dict) -> dict[str, float]:
    return {f"{label}.{k}": v for group in model_metrics(r).values() for k, v in group.items()}


def _eval(cfg: EvalConfig, ctx) -> dict:
    from llada_core.evaluate import elbo_perplexity, load_model, preference_accuracy, task_accuracy

    results: dict[str, dict] = {}
    tasks = str(storage.local_copy(storage.join(cfg.tasks, "sft_eval.jsonl")))
    for i, (label, path) in enumerate(cfg.models.items()):
        model, tok = load_model(path)
        r = {"elbo_ppl": elbo_perplexity(model, cfg.pretrain, "val", cfg.block_size, cfg.max_rows)}
        if label in cfg.decode_models:
            r["tasks"] = task_accuracy(model, tok, tasks, cfg.n_tasks, cfg.threshold, cfg.block_size)
            r["one_token"] = task_accuracy(model, tok, tasks, cfg.n_tasks, cfg.threshold, cfg.block_size,
                                           left_to_right=True)
            for mode, m in cfg.edit_modes.items():
                r[f"edit_{mode}"] = task_accuracy(model, tok, tasks, cfg.n_tasks, m.threshold, cfg.block_size,
                                                  edit_threshold=m.edit_threshold, edit_steps=m.edit_steps)
        if label in cfg.sweep_models:
            r["sweep"] = {str(t): task_accuracy(model, tok, tasks, cfg.n_tasks, t, cfg.block_size) for t in cfg.sweep}
        if label in cfg.preference_models:
            r["preference_accuracy"] = preference_accuracy(model, cfg.dpo, cfg.pairs, "val", cfg.max_rows * 2)
        results[label] = r
        del model, tok  # one model in memory at a time (llada_recipe.memory)
        ctx.log_metrics(i + 1, summary_metrics(label, r))
        for dataset, metrics in model_metrics(r).items():  # on the model's MLflow logged model too
            ctx.log_model_metrics(path, metrics, getattr(cfg, dataset))
    ctx.log_summary({k: v for label, r in results.items() for k, v in summary_metrics(label, r).items()})
    out = storage.join(cfg.out, "eval.json")
    storage.write_bytes(*storage.resolve(out), json.dumps(results, indent=2).encode())
    return {"results": out}


def _known_format(value: str | None) -> str | None:
    from llada_core.model.hf_formats import get_format

    if value is not None:
        get_format(value)  # an unknown name fails when the graph is validated, naming the choices
    return value


class ExportConfig(StrictModel):
    checkpoint: str
    out: str
    format: str | None = None  # llada_core.model.hf_formats; None: the AR layout of the model's family
    relocate_mask: bool = False  # llada_core.model.mask_relocation
    decoding: dict = {}  # a diffusion format's generation config: block_length, threshold
    _format = field_validator("format")(_known_format)


def _export_hf(cfg: ExportConfig, ctx) -> dict:
    from stages.model_hf import export_hf

    hf = storage.join(cfg.out, "hf")
    storage.delete(hf)
    export_hf(cfg.checkpoint, hf, cfg.format, cfg.decoding, relocate_mask=cfg.relocate_mask)
    return {"hf": hf}


class ImportConfig(StrictModel):
    hf_dir: str
    out: str
    add_mask_token: str | None = None
    export_format: str | None = None  # the recipe's: its [MASK] id is checked here, before any training
    relocate_mask: bool = False  # the recipe's export moves [MASK] (then that id must be free)
    _format = field_validator("export_format")(_known_format)


def _import_hf(cfg: ImportConfig, ctx) -> dict:
    from stages.model_hf import import_hf

    out = storage.join(cfg.out, "checkpoint")
    storage.delete(out)
    import_hf(cfg.hf_dir, out, add_mask_token=cfg.add_mask_token, export_format=cfg.export_format,
              relocate_mask=cfg.relocate_mask)
    return {"checkpoint": out}


make_tasks = Stage(_make_tasks, MakeTasksConfig, outputs=("tasks",))
prepare_pretrain = Stage(_prepare_pretrain, prepare_data.PrepareDataConfig, outputs=("dataset",))
prepare_instruct_data = Stage(_prepare_instruct, prepare_instruct.PrepareInstructConfig, outputs=("dataset",))
# checkpoint: consolidated weights (eval, merge, export, a next stage's init_checkpoint); state: the
# sharded training checkpoint with the optimizer (a next node's init_state)
train = Stage(_train, TrainNodeConfig, outputs=("checkpoint", "state"), check=_check_train, version="2",
              models=("checkpoint",))
train_with_candidates = Stage(lambda cfg, ctx: _train(cfg, ctx, candidates=True), TrainNodeConfig,
                              outputs=("checkpoint", "state", "candidates"), check=_check_train, version="2",
                              models=("checkpoint",))
merge = Stage(_merge, MergeConfig, outputs=("checkpoint",), num_cpus=1, models=("checkpoint",))
evaluate = Stage(_eval, EvalConfig, outputs=("results",), num_cpus=1)
export_hf = Stage(_export_hf, ExportConfig, outputs=("hf",), num_cpus=1, models=("hf",))
import_hf = Stage(_import_hf, ImportConfig, outputs=("checkpoint",), num_cpus=1, models=("checkpoint",))
