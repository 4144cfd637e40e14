"""megatron-core 0.16.1 on CPU: the ONE place where its CUDA assumptions are bridged.

Applied before any model is built. Patches 3 and 5 bridge the model's torch (non-transformer-engine)
layer spec and apply on every device, CUDA included (without them TP > 1 with MoE, e.g. llada2-flash,
asserts in WrappedTorchNorm on GPUs too); the others only in a process without CUDA. Each patch names
what fails without it (each was confirmed by removing it):
  1. torch.cuda shims: buffers are created on `torch.cuda.current_device()` (router, rotary, SP
     buffers); the alltoall dispatcher creates CUDA streams/events; the tensor-parallel RNG tracker
     reads/writes CUDA RNG state -> map all of it to the CPU.
  2. the default causal masks are built with device="cuda" (only used when no mask is given).
  3. the router's `te_general_gemm` is unbound without transformer-engine (NameError).
  4. alltoall with EP > 1 leaves split sizes as tensors (gloo wants ints); with EP x TP > 1 it
     needs uneven all-gather / reduce-scatter, which gloo lacks (emulated by padding / all-reduce).
  5. torch RMSNorm refuses sequence parallel (required by MoE + TP); norms are token-wise, so they
     are correct under SP once their params are tagged for the TP grad all-reduce.
  6. megatron's `jit_fuser` is torch.compile: 3-30 s of inductor compilation per shape on CPU for
     no gain; dynamo is disabled in CPU processes.
  7. pipeline schedules create a token counter with device="cuda"; tied embeddings under PP call
     `.cuda()` before all-reducing the shared weight.
  8. FP32Optimizer puts its (unused) loss scale on 'cuda'. Its grad-norm / clipping code asserts CUDA
     tensors too: the trainer computes the norm and clips itself (llada_core.trainer.optim).
Tested in CI against the pinned megatron-core (tests/test_megatron_model.py).
"""

from __future__ import annotations

import contextlib

import torch

_applied = False
_spec_applied = False


class _NoEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait(self, *args, **kwargs):
        pass

    def query(self):
        return True


class _NoStream:
    """One shared instance, so `current_stream() != stream` comparisons are False."""

    _instance = None

    def __new__(cls, *args, **kwargs):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _NoEvent()

    def synchronize(self):
        pass


def _patch_torch_cuda() -> None:
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.Stream = _NoStream
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.Event = _NoEvent
    torch.cuda.synchronize = lambda *a, **k: None
    # Not via torch.manual_seed: it calls torch.cuda.manual_seed_all (infinite recursion).
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.get_rng_state = lambda device=None: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state
    torch.cuda.random.set_rng_state = torch.cuda.set_rng_state

    import megatron.core.tensor_parallel.random as mrandom

    def get_state(device="cuda", clone=False, graph_safe=False):
        state = torch.get_rng_state()
        return state.clone() if clone else state

    mrandom._get_cuda_rng_state = get_state
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)


def _patch_default_masks() -> None:
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.transformer.utils as mutils

    def causal(sq):
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    def sliding(sq, skv, window_size):
        upper = torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=skv - sq - window_size[0])
        return ~torch.tril(upper, diagonal=skv - sq + window_size[1])

    for module in (mutils, fused_softmax):  # fused_softmax imported them by name
        module.get_default_causal_mask = causal
        module.get_sliding_window_causal_mask = sliding


def _patch_moe() -> None:
    import megatron.core.tensor_parallel.mappings as mappings
    import megatron.core.transformer.moe.moe_utils as moe_utils
    import megatron.core.transformer.moe.token_dispatcher as dispatcher

    def to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor):
            tensor = tensor.cpu()
            if as_numpy:
                tensor = tensor.numpy()
        return tensor

    moe_utils.maybe_move_tensor_to_cpu = to_cpu
    dispatcher.maybe_move_tensor_to_cpu = to_cpu

    gather, reduce_scatter = mappings._gather_along_first_dim, mappings._reduce_scatter_along_first_dim

    def uneven_gather(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1:
            return gather(input_, group, output_split_sizes, use_global_buffer)
        sizes = [int(x) for x in output_split_sizes]
        padded = input_.new_zeros((max(sizes), *input_.shape[1:]))
        padded[: input_.shape[0]] = input_
        parts = [torch.empty_like(padded) for _ in sizes]
        torch.distributed.all_gather(parts, padded.contiguous(), group=group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)

    def uneven_reduce_scatter(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is None or group.size() == 1:
            return reduce_scatter(input_, group, input_split_sizes, use_global_buffer)
        sizes = [int(x) for x in input_split_sizes]
        total = input_.contiguous().clone()
        torch.distributed.all_reduce(total, group=group)
        start = sum(sizes[: group.rank()])
        return total[start : start + sizes[group.rank()]].contiguous()

    mappings._gather_along_first_dim = uneven_gather
    mappings._reduce_scatter_along_first_dim = uneven_reduce_scatter


def _patch_router_gemm() -> None:
    import megatron.core.transformer.moe.moe_utils as moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def _patch_norm_sequence_parallel() -> None:
    import megatron.core.transformer.torch_norm as torch_norm

    def new(cls, config, hidden_size, eps=1e-5, persist_layer_norm=False, zero_centered_gamma=False,
            normalization="LayerNorm"):
        if config.layernorm_zero_centered_gamma:
            raise ValueError("zero-centered gamma is not supported by the torch norms")
        norm_cls = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}[config.normalization]
        norm = norm_cls(hidden_size, eps=eps)
        for p in norm.parameters():
            p.sequence_parallel = config.sequence_parallel
        return norm

    torch_norm.WrappedTorchNorm.__new__ = new


def _patch_pipeline() -> None:
    import types

    import megatron.core.pipeline_parallel.schedules as schedules
    from megatron.core.models.common.language_module import language_module

    real = torch

    class _CpuTorch(types.ModuleType):
        """torch for the schedules module only, with zeros(device="cuda") created on the CPU."""

        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def zeros(*args, device=None, **kwargs):
            if device is not None and str(device).startswith("cuda"):
                device = "cpu"
            return real.zeros(*args, device=device, **kwargs)

    schedules.torch = _CpuTorch("torch")

    setup = language_module.LanguageModule.setup_embeddings_and_output_layer

    def setup_on_cpu(self):
        to_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t
        try:
            return setup(self)
        finally:
            torch.Tensor.cuda = to_cuda

    language_module.LanguageModule.setup_embeddings_and_output_layer = setup_on_cpu


def _patch_optimizer() -> None:
    from megatron.core.optimizer.optimizer import FP32Optimizer, MegatronOptimizer

    def init(self, optimizer, config, init_state_fn):
        MegatronOptimizer.__init__(self, optimizer, config, init_state_fn)
        self._scale = torch.tensor([1.0])
        self.is_stub_optimizer = optimizer is None

    FP32Optimizer.__init__ = init


def apply() -> bool:
    """Bridge megatron-core to the torch layer spec (any device) and to the CPU; returns True if the
    CPU patches were applied (False on CUDA)."""
    global _applied, _spec_applied
    if not _spec_applied:
        _patch_router_gemm()
        _patch_norm_sequence_parallel()
        _spec_applied = True
    if torch.cuda.is_available():
        return False
    if not _applied:
        from torch import _dynamo

        _dynamo.config.disable = True
        _patch_torch_cuda()
        _patch_default_masks()
        _patch_moe()
        _patch_pipeline()
        _patch_optimizer()
        _applied = True
    return True
