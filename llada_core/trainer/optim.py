"""megatron DDP + optimizer for a LladaModel, gradient norm / clipping, learning rate, and an
optimizer-state layout that reshards across TP and EP.

Step order (per global batch): zero buffers -> micro-batch backwards (DDP hooks accumulate into
`main_grad`) -> `finalize_model_grads` (DP all-reduce x 1/dp, TP all-reduce of sequence-parallel and
QK-norm grads, expert-bias update + counter reset) -> global norm + clip -> `prepare_grads` +
`step_with_ready_grads`. megatron's own norm/clip asserts CUDA tensors, so we compute the norm:
each rank sums the squares of the grads it owns (no TP duplicates) divided by the number of data-
parallel copies, and one all-reduce over the world gives the global squared norm.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import param_is_not_shared

from llada_core.trainer.config import OptimConfig


def build_ddp_and_optimizer(model, optim: OptimConfig, bf16: bool = False):
    ddp = DistributedDataParallel(
        config=model.gpt.config, module=model.gpt,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                 use_distributed_optimizer=False, bucket_size=None),
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
                        adam_beta1=optim.beta1, adam_beta2=optim.beta2, adam_eps=optim.eps, clip_grad=0.0,
                        use_distributed_optimizer=False, bf16=bf16, fp16=False),
        [ddp],
    )
    return ddp, opt


def global_grad_norm(ddp) -> float:
    dp = ps.get_data_parallel_world_size(with_context_parallel=True)
    edp = ps.get_expert_data_parallel_world_size()
    etp_rank = ps.get_expert_tensor_parallel_rank()
    dense = expert = None
    for p in ddp.module.parameters():
        g = getattr(p, "main_grad", None)
        if g is None or not p.requires_grad or not param_is_not_shared(p):
            continue
        sq = g.double().pow(2).sum()
        if not getattr(p, "allreduce", True):  # expert parameter (EP > 1)
            if getattr(p, "tensor_model_parallel", False) or etp_rank == 0:
                expert = sq if expert is None else expert + sq
        elif param_is_not_tensor_parallel_duplicate(p):
            dense = sq if dense is None else dense + sq
    device = next(ddp.module.parameters()).device
    total = torch.zeros(1, dtype=torch.float64, device=device)
    if dense is not None:
        total += dense / dp
    if expert is not None:
        total += expert / edp
    dist.all_reduce(total)
    return math.sqrt(total.item())


def clip_grads_(ddp, max_norm: float, norm: float) -> float:
    """Scale every main_grad so the global norm is at most max_norm; returns the applied factor."""
    if max_norm <= 0 or norm <= max_norm:
        return 1.0
    factor = max_norm / (norm + 1e-6)
    for p in ddp.module.parameters():
        if getattr(p, "main_grad", None) is not None:
            p.main_grad.mul_(factor)
    return factor


def lr_at(optim: OptimConfig, step: int, total_steps: int) -> float:
    """Warm-up then constant / cosine / linear decay to min_lr (non-CPT stages)."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    frac = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
    frac = min(max(frac, 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if optim.decay == "cosine" else 1 - frac
    return optim.min_lr + (optim.lr - optim.min_lr) * shape


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_sharded_state(opt, model_sharded: dict, is_loading: bool) -> dict:
    """Adam moments as sharded tensors keyed by position, matched to their parameters' sharding, so
    the state reshards across TP and EP (megatron's own optimizer layout cannot change EP size: the
    number of chained optimizers changes with it)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
    from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

    by_param = {id(t.data): t for t in nested_values(model_sharded)
                if isinstance(t, ShardedTensor | ShardedTensorFactory)}
    out, steps = {}, set()
    for o in opt.chained_optimizers:
        if is_loading:
            o.init_state_fn(o.optimizer, o.config)
        for group in o.optimizer.param_groups:
            for p in group["params"]:
                state, sharded = o.optimizer.state[p], by_param[id(p)]
                for key in ("exp_avg", "exp_avg_sq"):
                    # unique key per local tensor: local experts share a ShardedTensor key
                    out[f"{key}.{len(out)}"] = make_sharded_optimizer_tensor(sharded, state[key], f"optimizer.{key}")
                if "step" in state:
                    steps.add(float(state["step"]))
    out["step"] = steps.pop() if steps else 0.0
    return out


def restore_optimizer_step(opt, step: float) -> None:
    for o in opt.chained_optimizers:
        for group in o.optimizer.param_groups:
            for p in group["params"]:
                o.optimizer.state[p]["step"] = torch.tensor(float(step))
