"""`llada plan RECIPE`: what a recipe will do and whether its layout fits, without running anything.

Memory per GPU (an estimate to size a cluster, not a measurement):
  weights + grads + optimizer: expert params / (ep * etp * pp) + the rest / (tp * pp), at
    bf16 weights (2 B) + fp32 main grads (4 B) + fp32 master weights and Adam m, v (12 B; the trainer
    does not use megatron's distributed optimizer yet, which would divide these by dp);
  activations (Korthikanti et al. 2022, selective recompute, sequence parallel): 34 * s * b * h / tp
    bytes per layer, for all layers of the model (1F1B keeps pp micro-batches of the first stage's
    layers in flight), with s = 2L for block diffusion ([x_t ; x_0]) and s = L for MDLM / AR;
  + the logits of one micro-batch in fp32: b * s * vocab / tp * 4 B.
"""

from __future__ import annotations

from dataclasses import dataclass

from llada_core.config import ConfigError
from llada_core.model.config import ModelConfig
from llada_core.objectives.registry import build_objective
from llada_core.parallel.layout import ParallelLayout
from llada_core.trainer.config import TrainingConfig
from pipelines import dag

GiB = 1 << 30


@dataclass
class MemoryEstimate:
    params_per_gpu: float
    weights_grads_optimizer_gib: float
    activations_gib: float
    logits_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_grads_optimizer_gib + self.activations_gib + self.logits_gib


def expert_params(cfg: ModelConfig) -> int:
    moe_layers = sum(cfg.moe_layers())
    return moe_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.moe_ffn_hidden_size


def estimate(cfg: ModelConfig, layout: ParallelLayout, seq_len: int, micro_batch: int, block_diffusion: bool = True,
             distributed_optimizer: bool = False, reference_model: bool = False) -> MemoryEstimate:
    experts = expert_params(cfg)
    dense = cfg.total_params() - experts
    per_gpu = experts / (layout.ep * layout.expert_tp * layout.pp) + dense / (layout.tp * layout.pp)
    optimizer = 12 / (layout.dp if distributed_optimizer else 1)
    s = seq_len * (2 if block_diffusion else 1) // layout.cp
    acts = 34 * s * micro_batch * cfg.hidden_size / layout.tp * cfg.num_layers
    logits = micro_batch * s * cfg.vocab_size / layout.tp * 4
    frozen = 2 if reference_model else 0  # DPO: the bf16 reference beside the policy
    return MemoryEstimate(per_gpu, per_gpu * (2 + 4 + optimizer + frozen) / GiB, acts / GiB, logits / GiB)


def plan(cfg) -> dict:
    """The recipe's nodes, steps and tokens per stage, layout checks and memory per GPU."""
    from llada_recipe.build import build_nodes, cpt_phases, recipe_memory, tokens_per_step
    from llada_recipe.memory import recipe_model

    model = recipe_model(cfg)
    layout = cfg.parallel
    layout.check_model(model.num_layers, model.num_experts, model.num_heads, model.num_kv_heads, model.vocab_size)
    nodes = dag.validate(build_nodes(cfg), missing_paths_ok=True)  # inputs may exist only on the cluster
    stages = []
    for node in nodes:
        stage = node.config.get("training")
        if not stage:
            stages.append({"node": node.name, "stage": node.stage.split(":")[-1]})
            continue
        stage = TrainingConfig.model_validate(stage)
        objective = build_objective(stage.objective)
        seq = cfg.seq_len if objective.data_kind == "pretrain" else cfg.instruct.max_len
        block = stage.schedule.build().at(stage.schedule_offset_tokens).block_size if stage.schedule else None
        mem = estimate(model, layout, seq, stage.micro_batch, block_diffusion=objective.input_length(seq, block) > seq,
                       reference_model=objective.needs_reference)
        global_batch = stage.micro_batch * stage.grad_accum * layout.dp
        stages.append({"node": node.name, "objective": objective.kind, "steps": stage.steps,
                       "global_batch": global_batch, "tokens": stage.steps * global_batch * seq,
                       "memory_gib": round(mem.total_gib, 1),
                       "weights_grads_optimizer_gib": round(mem.weights_grads_optimizer_gib, 1),
                       "activations_gib": round(mem.activations_gib, 1), "logits_gib": round(mem.logits_gib, 1)})
    host = recipe_memory(cfg)
    hosts = {"train_driver": host.train_driver, "train_rank_load": host.train_rank_load,
             "train_rank_save": host.train_rank_save, "merge": host.merge,
             "eval": host.eval, "export": host.export, "import_hf": host.import_hf}
    _check_fits(cfg.hardware, stages, nodes, host)
    return {"recipe": cfg.name, "layout": layout.model_dump(), "dp": layout.dp,
            "host_memory_gib": {k: round(v / GiB, 1) for k, v in hosts.items()},
            "model": {"total_params": model.total_params(), "active_params": model.active_params()},
            "cpt_phases": [{"phase": p, "tokens": b - a} for p, a, b in cpt_phases(cfg)],
            "cpt_tokens_per_step": tokens_per_step(cfg), "nodes": stages}


def _check_fits(hw, stages: list[dict], nodes, host) -> None:
    """Refuse a recipe whose nodes cannot fit the hardware it names, naming the node and the figure."""
    def refuse(node: str, what: str, need: float, have: float, knob: str, fix: str) -> None:
        raise ConfigError(f"node {node!r}: {what} needs {need:.1f} GiB, but hardware.{knob} is {have:g} GiB ({fix})")

    split = "a layout that splits the model over more GPUs, or larger GPUs"

    for n in stages:
        if "steps" in n and hw.gpu_memory_gib and n["memory_gib"] > hw.gpu_memory_gib:
            refuse(n["node"], "training, per GPU,", n["memory_gib"], hw.gpu_memory_gib, "gpu_memory_gib", split)
    if not hw.host_memory_gib:
        return
    for node in nodes:
        need = node.resources.get("memory")
        if need and need / GiB > hw.host_memory_gib:
            refuse(node.name, f"its {node.stage.split(':')[-1]} process", need / GiB, hw.host_memory_gib,
                   "host_memory_gib", "it runs in one process: a host with more memory")
    trained = [n["node"] for n in stages if "steps" in n]
    for what, per_rank in (("loading the hand-off", host.train_rank_load),
                           ("saving a checkpoint", host.train_rank_save)):
        per_host = per_rank * hw.gpus_per_host / GiB  # every rank of a host does it at once
        if trained and per_host > hw.host_memory_gib:
            refuse(trained[0], f"{what} on {hw.gpus_per_host} ranks of one host", per_host,
                   hw.host_memory_gib, "host_memory_gib", split + ", or fewer GPUs per host")


def format_plan(p: dict) -> str:
    lay = p["layout"]
    lines = [f"recipe {p['recipe']}: {p['model']['total_params'] / 1e9:.2f}B params "
             f"({p['model']['active_params'] / 1e9:.2f}B active)",
             f"layout world={lay['world_size']} tp={lay['tp']} pp={lay['pp']} ep={lay['ep']} cp={lay['cp']} "
             f"dp={p['dp']}",
             f"CPT: {p['cpt_tokens_per_step']:,} tokens per step; "
             + ", ".join(f"{c['phase']} {c['tokens']:,}" for c in p["cpt_phases"]),
             "", f"{'node':<18}{'objective':<10}{'steps':>7}{'batch':>7}{'tokens':>16}{'GiB/GPU':>9}"
             "  (weights+opt / acts / logits)"]
    for n in p["nodes"]:
        if "steps" not in n:
            lines.append(f"{n['node']:<18}{n['stage']}")
            continue
        lines.append(f"{n['node']:<18}{n['objective']:<10}{n['steps']:>7}{n['global_batch']:>7}{n['tokens']:>16,}{n['memory_gib']:>9}"
                     f"  ({n['weights_grads_optimizer_gib']} / {n['activations_gib']} / {n['logits_gib']})")
    lines += ["", "host memory per process, GiB (requested from Ray for the node's task): "
              + ", ".join(f"{k} {v}" for k, v in p["host_memory_gib"].items())]
    return "\n".join(lines)
