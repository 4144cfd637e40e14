"""The LLaDA2.0 recipe as a DAG (R = arXiv 2512.15745):

  make_tasks ─────────────┬──────────────┐
  prepare_pretrain ─┬─ prepare_sft    prepare_dpo
                    └─ base (AR pretraining of the preset, or import-hf of your AR checkpoint)
                         └─ cpt_warmup (block 1 -> 4 -> 32 -> 64 -> L) ─ cpt_stable (L: MDLM)
                              ─ cpt_decay (L -> ... -> 32) ─ merge (top-k by val ELBO)
                                   ─ sft ─ cap ─ dpo (reference = cap) ─ export (HF)
  eval: ELBO perplexity of every model, task accuracy + TPF of sft/cap/dpo, preference accuracy.

One RecipeConfig (pipelines/recipes/*.yaml) -> nodes; the CPT phases are slices of one WSD
schedule's token axis, each phase a node that continues from the previous phase's checkpoint.
"""

from __future__ import annotations

import math

from llada_core.trainer.config import ObjectiveConfig, OptimConfig, StageConfig
from pipelines.dag import Node
from pipelines.recipe_config import Finetune, RecipeConfig

S = "tasks.stages:"


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


def _train_node(cfg: RecipeConfig, name: str, stage: StageConfig, candidates: bool = False) -> Node:
    t = cfg.training
    return Node(name, S + ("train_with_candidates" if candidates else "train"), {
        "stage": _dump(stage), "out": "${out}", "max_failures": t.max_failures,
        "cpus_per_worker": t.cpus_per_worker, "use_gpu": t.use_gpu})


def _stage(cfg: RecipeConfig, name: str, **kw) -> StageConfig:
    return StageConfig(name=name, layout=cfg.parallel, seed=cfg.seed, checkpoint_every=cfg.training.checkpoint_every, **kw)


def _finetune(cfg: RecipeConfig, name: str, objective: str, ft: Finetune, data: str, init: str, **kw) -> StageConfig:
    return _stage(cfg, name, objective=objective, data=data, init_checkpoint=init, steps=ft.steps,
                  micro_batch=ft.micro_batch, grad_accum=ft.grad_accum,
                  objective_cfg=ObjectiveConfig(block_size=ft.block_size),
                  optim=OptimConfig(lr=ft.lr, min_lr=ft.min_lr, warmup_steps=max(1, ft.steps // 20)), **kw)


def build_nodes(cfg: RecipeConfig) -> list[Node]:
    nodes: list[Node] = []
    ins = cfg.instruct
    if not (ins.sft_input and ins.dpo_input):
        nodes.append(Node("make_tasks", S + "make_tasks", {"out": "${out}", "n": ins.synthetic_tasks, "seed": cfg.seed,
                                                           "eval_fraction": ins.eval_fraction}))
    hf = cfg.base.hf_checkpoint
    tokenizer = {"path": hf or cfg.data.tokenizer, "train": not (hf or cfg.data.tokenizer),
                 "vocab_size": cfg.data.vocab_size, "add_mask_token": cfg.data.add_mask_token}
    nodes.append(Node("prepare_pretrain", S + "prepare_pretrain", {
        "input": cfg.data.input, "out": "${out}", "seq_len": cfg.seq_len, "tokenizer": tokenizer,
        "val_fraction": cfg.data.val_fraction, "seed": cfg.seed, "num_workers": cfg.num_workers}))
    pretrain, tok = "${prepare_pretrain.dataset}", "${prepare_pretrain.dataset}/tokenizer"
    for kind, user in (("sft", ins.sft_input), ("dpo", ins.dpo_input)):
        nodes.append(Node(f"prepare_{kind}", S + "prepare_instruct_data", {
            "kind": kind, "input": user or f"${{make_tasks.tasks}}/{kind}_train.jsonl", "out": "${out}", "tokenizer": tok,
            "max_len": ins.max_len, "val_fraction": ins.val_fraction, "seed": cfg.seed, "num_workers": cfg.num_workers}))

    if hf:
        nodes.append(Node("base", S + "import_hf", {"hf_dir": hf, "out": "${out}", "add_mask_token": cfg.data.add_mask_token}))
    else:  # block size 1 is AR: the base is an AR model of the same architecture
        b = cfg.base
        nodes.append(_train_node(cfg, "base", _stage(
            cfg, "base", objective="ar", data=pretrain, model=cfg.training.model, model_overrides=cfg.training.model_overrides,
            steps=b.steps, micro_batch=b.micro_batch, optim=OptimConfig(lr=b.lr, min_lr=b.lr / 10, warmup_steps=max(1, b.steps // 20)))))

    previous = "${base.checkpoint}"
    per_step = tokens_per_step(cfg)
    for phase, start, end in cpt_phases(cfg):
        name = f"cpt_{phase}"
        decay = phase == "decay"
        stage = _stage(cfg, name, objective="cpt", data=pretrain, init_checkpoint=previous, schedule=cfg.schedule,
                       schedule_offset_tokens=start, steps=math.ceil((end - start) / per_step),
                       micro_batch=cfg.cpt.micro_batch, grad_accum=cfg.cpt.grad_accum)
        if decay:
            stage = stage.model_copy(update={"checkpoint_every": cfg.cpt.candidates_every})
        nodes.append(_train_node(cfg, name, stage, candidates=decay))
        previous = f"${{{name}.checkpoint}}"
    models = {"base": "${base.checkpoint}"} | {f"cpt_{p}": f"${{cpt_{p}.checkpoint}}" for p, _, _ in cpt_phases(cfg)}
    if "cpt_decay" in models:
        nodes.append(Node("merge", S + "merge", {"candidates": "${cpt_decay.candidates}", "dataset": pretrain,
                                                 "out": "${out}", "k": cfg.cpt.merge_top_k}))
        previous = models["merged"] = "${merge.checkpoint}"

    nodes.append(_train_node(cfg, "sft", _finetune(cfg, "sft", "sft", cfg.sft, "${prepare_sft.dataset}", previous)))
    nodes.append(_train_node(cfg, "cap", _finetune(cfg, "cap", "cap", cfg.cap, "${prepare_sft.dataset}", "${sft.checkpoint}")))
    nodes.append(_train_node(cfg, "dpo", _finetune(cfg, "dpo", "dpo", cfg.dpo, "${prepare_dpo.dataset}", "${cap.checkpoint}",
                                                   reference_checkpoint="${cap.checkpoint}")))
    models |= {k: f"${{{k}.checkpoint}}" for k in ("sft", "cap", "dpo")}
    e = cfg.eval
    tasks = "${make_tasks.tasks}" if not (ins.sft_input and ins.dpo_input) else None
    nodes.append(Node("eval", S + "evaluate", {
        "models": models, "pretrain": pretrain, "tasks": tasks or "", "dpo": "${prepare_dpo.dataset}", "out": "${out}",
        "block_size": e.block_size, "threshold": e.threshold, "sweep": e.sweep, "n_tasks": e.n_tasks, "max_rows": e.max_rows,
        "decode_models": [m for m in ("merged", "sft", "cap", "dpo") if m in models] if tasks else [],
        "sweep_models": ["sft", "cap"] if tasks else []}))
    nodes.append(Node("export", S + "export_hf", {"checkpoint": "${dpo.checkpoint}", "out": "${out}"}))
    return nodes
