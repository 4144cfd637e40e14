"""A training checkpoint -> one consolidated checkpoint, in one process, tensor by tensor.

A training checkpoint is megatron-core dist-checkpointing's torch_dist format (torch DCP): every
rank wrote only its own slices, and the metadata knows each tensor's global shape, whatever TP / EP /
PP / DP layout saved it. Reading one global tensor at a time (DCP loads just the keys asked for) and
handing it to `save_checkpoint`, which writes its parts tensor by tensor, bounds the memory to one
read batch (READ_BYTES, or one larger global tensor): no rank gathers the model, and the process
doing it need not be a training rank (the node's driver does it once, after the worker group finished).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from llada_core.checkpoint import save_checkpoint
from llada_core.data.tokenizer import LladaTokenizer
from llada_core.model.config import ModelConfig

# megatron's sharded keys name the pre-attention / pre-MLP norms as TE's fused layers do (the
# layer_norm_weight of the linear after them); consolidated names are the modules' own
_FUSED_NORMS = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}
_STACKED = ".mlp.experts.experts."  # one [num_experts, ...] tensor per layer and expert weight
_LAYERS = "decoder.layers."
OPTIMIZER_PREFIX = "optimizer."
READ_BYTES = 256 << 20


def model_keys(directory: str | Path) -> list[tuple[str, torch.Size]]:
    """(key, global shape) of every model tensor of a training checkpoint (optimizer state left out)."""
    meta = FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    return [(k, m.size) for k, m in meta.items()
            if isinstance(m, TensorStorageMetadata) and not k.startswith(OPTIMIZER_PREFIX)]


def read_tensors(directory: str | Path, keys: list[str]) -> dict[str, Tensor]:
    """Global tensors, each assembled from the slices every rank wrote (DCP reads only these)."""
    meta = FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    out = {k: torch.empty(meta[k].size, dtype=meta[k].properties.dtype) for k in keys}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process": yes
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(out, storage_reader=FileSystemReader(str(directory)), no_dist=True)
    return out


def _batches(keys: list[tuple[str, torch.Size]], dtype_bytes: dict[str, int], budget: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for key, shape in keys:
        n = shape.numel() * dtype_bytes[key]
        if batch and size + n > budget:
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += n
    if batch:
        yield batch


def consolidated_name(key: str) -> str:
    for fused, own in _FUSED_NORMS.items():
        if key.endswith(fused):
            return "gpt." + key[: -len(fused)] + own
    return "gpt." + key


def _unstacked(key: str, tensor: Tensor) -> Iterator[tuple[str, Tensor]]:
    """Per-layer, per-expert (consolidated name, tensor) of one checkpoint tensor. Layers stacked by
    megatron (homogeneous models saved without `non_homogeneous_layers`) come as `decoder.layers.X`
    with a leading layer axis; experts as `...mlp.experts.experts.X` with a leading expert axis."""
    head, _, rest = key.partition(_LAYERS)
    if rest and not rest.split(".", 1)[0].isdigit():
        for layer in range(tensor.shape[0]):
            yield from _unstacked(f"{head}{_LAYERS}{layer}.{rest}", tensor[layer])
    elif _STACKED in key:
        head, tail = key.split(_STACKED)
        for e in range(tensor.shape[0]):
            yield f"gpt.{head}.mlp.experts.local_experts.{e}.{tail}", tensor[e].clone()
    else:
        yield consolidated_name(key), tensor.clone() if tensor._base is not None else tensor


def consolidated_tensors(directory: str | Path, read_bytes: int = READ_BYTES) -> Iterator[tuple[str, Tensor]]:
    """The checkpoint's model weights by consolidated (1-rank) names, read `read_bytes` at a time
    (one DCP read per batch of keys; a larger tensor alone)."""
    keys = model_keys(directory)
    meta = FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    width = {k: torch.empty(0, dtype=meta[k].properties.dtype).element_size() for k, _ in keys}
    for batch in _batches(keys, width, read_bytes):
        tensors = read_tensors(directory, batch)
        for key in batch:
            yield from _unstacked(key, tensors.pop(key))


def consolidate(directory: str | Path, out: str, cfg: ModelConfig, tok: LladaTokenizer, meta: dict) -> str:
    """Write the consolidated checkpoint of a local training checkpoint directory to `out`."""
    return str(save_checkpoint(out, cfg, consolidated_tensors(directory), tok, meta))
