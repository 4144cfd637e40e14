"""The LLaDA2.0 recipe as a DAG (R = arXiv 2512.15745):

  make_tasks ─────────────┬──────────────┐
  prepare_pretrain ─┬─ prepare_sft    prepare_dpo
                    └─ base (AR pretraining of the preset, or import-hf of your AR checkpoint)
                         └─ cpt_warmup (block 1 -> 4 -> 32 -> 64 -> L) ─ cpt_stable (L: MDLM)
                              ─ cpt_decay (L -> ... -> 32) ─ merge (top-k by val ELBO)
                                   ─ sft ─ cap ─ dpo (reference = cap) ─ export (HF)
  eval: ELBO perplexity of every model, task accuracy + TPF of sft/cap/dpo, preference accuracy.

start_at: sft | cap | dpo starts that stage from base.hf_checkpoint, an imported diffusion model (a
released LLaDA2.0): no CPT, no merge; the imported model is decoded in the eval as the "before".

One RecipeConfig (llada_recipe/recipes/*.yaml) -> nodes; the CPT phases are slices of one WSD
schedule's token axis, each phase a node that continues from the previous phase's checkpoint.
"""

from __future__ import annotations

import dataclasses
import math

from pydantic import ValidationError

from llada_core import storage
from llada_core.config import ConfigError, format_validation_error, load_config
from llada_core.data import synthetic
from llada_core.data.sources import STDLIB
from llada_core.model.config import pad_vocab
from llada_core.model.hf_formats import get_format
from llada_core.objectives.sft import ResponseConfig
from llada_core.trainer.config import LaunchConfig, TrainingConfig, TrainingSettings
from llada_recipe.config import RecipeConfig, recipe_path
from llada_recipe.memory import HandoffMemory, checkpoint_width, handoff_memory, recipe_model
from pipelines import dag
from pipelines.dag import Node
from stages.prepare_data import PretrainDataSettings
from stages.prepare_instruct import InstructDataSettings

S = "stages.llada:"
FINETUNE = ("sft", "cap", "dpo")


def _dump(model) -> dict:
    return model.model_dump(mode="json")


def cpt_phases(cfg: RecipeConfig) -> list[tuple[str, int, int]]:
    """(phase, start token, end token) of each WSD phase with tokens."""
    spans: dict[str, list[int]] = {}
    for seg in cfg.schedule.build().describe():
        span = spans.setdefault(seg["phase"], [seg["start"], seg["end"]])
        span[1] = seg["end"]
    return [(phase, a, b) for phase, (a, b) in spans.items() if b > a]


def tokens_per_step(cfg: RecipeConfig) -> int:
    return cfg.cpt.micro_batch * cfg.cpt.grad_accum * cfg.parallel.dp * cfg.seq_len


def _train_node(cfg: RecipeConfig, name: str, stage: TrainingConfig, candidates: bool = False) -> Node:
    return Node(name, S + ("train_with_candidates" if candidates else "train"),
                {"training": _dump(stage), "out": "${out}", **_settings(cfg.training, LaunchConfig)})


def _with_memory(nodes: list[Node], memory: HandoffMemory) -> list[Node]:
    """Each node's Ray task requests the host memory its process peaks at (llada_recipe.memory), so
    Ray places a whole-model eval on a host that holds it, not on a small head node."""
    for node in nodes:
        need = memory.of(node.stage.split(":")[-1])
        if need is not None:
            node.resources["memory"] = need
    return nodes


def _settings(section, base: type) -> dict:
    """The part of a recipe section that is `base`'s knobs (a stage's settings)."""
    return section.model_dump(mode="json", include=set(base.model_fields))


def _stage(cfg: RecipeConfig, name: str, section: TrainingSettings, **wiring) -> TrainingConfig:
    if hasattr(section, "objective"):
        wiring.setdefault("objective", section.objective.model_dump(mode="json"))
        if cfg.token_editing and "edit" in wiring["objective"]:  # CPT, SFT, CAP: the T2T stream on
            wiring["objective"] = wiring["objective"] | {"edit": _dump(cfg.token_editing)}
    try:
        return TrainingConfig(name=name, layout=cfg.parallel, seed=cfg.seed, **_settings(section, TrainingSettings),
                              **wiring)
    except ValidationError as exc:  # a combination of sections no single section can check (e.g. DPO under PP)
        raise ConfigError(format_validation_error(exc, f"recipe {cfg.name}, node {name}")) from None


def _where(path: str | None) -> str | None:
    """A user's input path, absolute (resolved here, on the driver, not by each worker)."""
    return path if path in (None, STDLIB) else storage.absolute(path)


def build_nodes(cfg: RecipeConfig) -> list[Node]:
    nodes: list[Node] = []
    ins = cfg.instruct
    if not (ins.sft_input and ins.dpo_input):
        nodes.append(Node("make_tasks", S + "make_tasks", {"out": "${out}", "seed": cfg.seed, **_dump(ins.tasks)}))
    hf = _where(cfg.base.hf_checkpoint)
    tokenizer = _dump(cfg.data.tokenizer) | {"path": _where(cfg.data.tokenizer.path)}
    if cfg.data.tokenizer.train and not (ins.sft_input and ins.dpo_input):  # the built-in tasks' symbols stay whole
        tokenizer["single_tokens"] = sorted({*cfg.data.tokenizer.single_tokens, *synthetic.SYMBOLS})
    if hf:  # the imported model's own tokenizer
        tokenizer = {"path": hf, "add_mask_token": cfg.data.tokenizer.add_mask_token}
    nodes.append(Node("prepare_pretrain", S + "prepare_pretrain", {
        "input": _where(cfg.data.input), "out": "${out}", "seq_len": cfg.seq_len, "seed": cfg.seed,
        "num_workers": cfg.num_workers, **_settings(cfg.data, PretrainDataSettings), "tokenizer": tokenizer}))
    pretrain, tok = "${prepare_pretrain.dataset}", "${prepare_pretrain.dataset}/tokenizer"
    for kind, user in (("sft", _where(ins.sft_input)), ("dpo", _where(ins.dpo_input))):
        nodes.append(Node(f"prepare_{kind}", S + "prepare_instruct_data", {
            "kind": kind, "input": user or f"${{make_tasks.tasks}}/{kind}_train.jsonl", "out": "${out}",
            "tokenizer": tok, "seed": cfg.seed, "num_workers": cfg.num_workers,
            **_settings(ins, InstructDataSettings)}))

    if hf:
        nodes.append(Node("base", S + "import_hf", {"hf_dir": hf, "out": "${out}", "export_format": cfg.export.format,
                                                    "relocate_mask": cfg.export.relocate_mask,
                                                    "add_mask_token": cfg.data.tokenizer.add_mask_token}))
    else:  # block size 1 is AR: the base is an AR model of the same architecture
        t = cfg.training
        nodes.append(_train_node(cfg, "base", _stage(cfg, "base", cfg.base, objective={"kind": "ar"},
                                                     data=pretrain, model=t.model, model_overrides=t.model_overrides,
                                                     steps=cfg.base.steps)))

    previous, init = "${base.checkpoint}", {"init_checkpoint": "${base.checkpoint}"}
    per_step = tokens_per_step(cfg)
    for phase, start, end in cpt_phases(cfg) if cfg.start_at == "cpt" else ():
        name = f"cpt_{phase}"
        decay = phase == "decay"
        stage = _stage(cfg, name, cfg.cpt, data=pretrain, schedule=cfg.schedule, schedule_offset_tokens=start,
                       steps=math.ceil((end - start) / per_step), **init)
        if not cfg.cpt.carry_state:  # a fresh node counts steps from 0: the noise window is CPT's, not the node's
            noise_steps = max(0, stage.objective.mask_noise_steps - start // per_step)
            stage = stage.model_copy(update={"objective": stage.objective.model_copy(
                update={"mask_noise_steps": noise_steps})})
        if decay:
            stage = stage.model_copy(update={"checkpoint_every": cfg.cpt.candidates_every})
        nodes.append(_train_node(cfg, name, stage, candidates=decay))
        previous = f"${{{name}.checkpoint}}"
        # the phases are one trajectory: the next continues this one's weights, Adam moments and data
        init = {"init_state": f"${{{name}.state}}"} if cfg.cpt.carry_state else {"init_checkpoint": previous}
    models = {"base": "${base.checkpoint}"}
    models |= {f"cpt_{p}": f"${{cpt_{p}.checkpoint}}" for p, _, _ in cpt_phases(cfg) if cfg.start_at == "cpt"}
    if "cpt_decay" in models:
        nodes.append(Node("merge", S + "merge", {"candidates": "${cpt_decay.candidates}", "dataset": pretrain,
                                                 "out": "${out}", **_dump(cfg.merge)}))
        previous = models["merged"] = "${merge.checkpoint}"

    sft_data, dpo_data = "${prepare_sft.dataset}", "${prepare_dpo.dataset}"
    finetune = FINETUNE[FINETUNE.index(cfg.start_at):] if cfg.start_at != "cpt" else FINETUNE
    for name in finetune:  # each from the one before (the first from `previous`); DPO's reference = its init
        init = {"init_checkpoint": previous}
        if name == "cap" and cfg.cap.carry_state and "sft" in finetune:
            init = {"init_state": "${sft.state}"}
        if name == "dpo":
            init["reference_checkpoint"] = previous
        section = getattr(cfg, name)
        data = dpo_data if name == "dpo" else sft_data
        nodes.append(_train_node(cfg, name, _stage(cfg, name, section, data=data, steps=section.steps, **init)))
        previous = models[name] = f"${{{name}.checkpoint}}"
    tasks = "${make_tasks.tasks}" if not (ins.sft_input and ins.dpo_input) else None
    # an imported diffusion model (start_at) is decoded too: the "before" of its fine-tuning
    decoded = ["base"] * (cfg.start_at != "cpt") + [m for m in ("merged", *FINETUNE) if m in models]
    edit_modes = _dump(cfg.eval)["edit_modes"] if cfg.token_editing else {}  # decoded and exported with editing
    nodes.append(Node("eval", S + "evaluate", {
        "models": models, "pretrain": pretrain, "tasks": tasks or "", "dpo": dpo_data, "out": "${out}",
        **_dump(cfg.eval), "pairs": cfg.dpo.objective.model_dump(mode="json", include=set(ResponseConfig.model_fields)),
        "edit_modes": edit_modes,
        "decode_models": decoded if tasks else [],
        "sweep_models": list(finetune) if tasks else []}))
    nodes.append(Node("export", S + "export_hf", {
        "checkpoint": previous, "out": "${out}", "format": cfg.export.format, "relocate_mask": cfg.export.relocate_mask,
        "decoding": {"block_length": cfg.eval.block_size, "threshold": cfg.eval.threshold}
        | ({"edit_modes": edit_modes} if cfg.token_editing else {})},
        registered_model=cfg.export.registered_model or f"llada-{cfg.name}"))
    return _with_memory(nodes, recipe_memory(cfg))


def recipe_memory(cfg: RecipeConfig) -> HandoffMemory:
    memory = handoff_memory(recipe_model(cfg), cfg.parallel, cfg.seq_len, checkpoint_width(cfg), cfg.merge.k)
    if not cfg.export.relocate_mask:
        return memory
    # the relocated export holds a matrix grown to the server's [MASK] id, and its bytes as written
    grown = pad_vocab(get_format(cfg.export.format).mask_id + 1) * recipe_model(cfg).hidden_size
    return dataclasses.replace(memory, export=memory.export + 2 * grown * checkpoint_width(cfg))


def load(recipe: str, overrides: list[str] = ()) -> tuple:
    """The loader `pipelines.runs.start` takes: a recipe name (llada_recipe/recipes/NAME.yaml) or a
    YAML path, either a LLaDA recipe config or a plain `nodes:` graph."""
    from pipelines import runs

    path = recipe_path(recipe)
    if runs.is_graph(path):
        return runs.load_graph(str(path), overrides)
    cfg = load_config(RecipeConfig, path, overrides=overrides)
    return cfg, dag.validate(build_nodes(cfg))  # a bad recipe fails here, before anything runs


def start(recipe: str, overrides: list[str] = (), **kw) -> tuple[str, str, dict]:
    """`pipelines.runs.start` with this recipe package's loader."""
    from pipelines import runs

    return runs.start(recipe, overrides, load=load, **kw)
