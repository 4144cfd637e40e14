"""Parallelism is set up here and nowhere else: process group + megatron-core parallel state.

Call `init_parallel(layout)` once per worker process (Ray Train worker, torchrun, spawn) before
building a model; `init_single_process()` is the 1-rank case for tools and tests.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from llada_core.parallel import cpu_compat
from llada_core.parallel.layout import ParallelLayout


def init_parallel(layout: ParallelLayout, seed: int = 1234) -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    cpu_compat.apply()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() != layout.world_size:
        raise ValueError(f"layout.world_size={layout.world_size} but the process group has "
                         f"{dist.get_world_size()} ranks")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        context_parallel_size=layout.cp, expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.expert_tp,
    )
    # Identical seed on every rank: data-parallel replicas must start from the same weights.
    model_parallel_cuda_manual_seed(seed)


def init_single_process(seed: int = 1234) -> None:
    """A 1-rank process group (gloo on CPU) for tools, evaluation and tests."""
    if not dist.is_initialized():
        # an in-process store: no port, and nothing (MASTER_PORT) left in os.environ for child
        # processes to inherit - a Ray cluster started later would hand it to every worker
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    init_parallel(ParallelLayout(world_size=1), seed)
