"""Consolidated (1-rank) state <-> one rank's shard, for any TP / EP / PP layout.

Rules (megatron-core's layouts, confirmed against built models):
  column-parallel, split on dim 0 by TP: word embeddings, output layer, linear_qkv (+ bias; its
    per-KV-group interleave makes a contiguous split correct)
  row-parallel, split on dim 1: linear_proj, every linear_fc2
  gated linear_fc1 = [gate ; up]: rank r holds [gate_r ; up_r]
  expert weights: TP over the expert-TP size; EP rank r holds global experts r*E/ep .. (r+1)*E/ep-1
    as local_experts.0 ..
  replicated: norms, router weight, expert_bias
  PP: global layer i lives on stage i // (layers/pp) as local layer i % (layers/pp); embeddings on the
    first stage, final norm and output layer on the last.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from llada_core.model.config import ModelConfig

_LAYER = re.compile(r"^gpt\.decoder\.layers\.(\d+)\.(.*)$")
_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class RankCoords:
    tp: int = 0
    tp_size: int = 1
    pp: int = 0
    pp_size: int = 1
    ep: int = 0
    ep_size: int = 1
    etp: int = 0
    etp_size: int = 1


def _split(t: Tensor, dim: int, rank: int, size: int, gated: bool = False) -> Tensor:
    if size == 1:
        return t
    if gated:
        gate, up = t.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    return t.chunk(size, dim=dim)[rank]


def _join(parts: list[Tensor], dim: int, gated: bool = False) -> Tensor:
    if len(parts) == 1:
        return parts[0]
    if gated:
        gates, ups = zip(*(p.chunk(2, dim=0) for p in parts), strict=True)
        return torch.cat([torch.cat(gates), torch.cat(ups)])
    return torch.cat(parts, dim=dim)


def _rule(suffix: str) -> tuple[int | None, bool]:
    """(split dim or None for replicated, gated) of a parameter by its layer-local name."""
    if suffix.endswith("linear_fc1.weight"):
        return 0, True
    if suffix.endswith("linear_fc2.weight") or suffix.endswith("linear_proj.weight"):
        return 1, False
    if "linear_qkv" in suffix:
        return 0, False
    return None, False


def shard_name(name: str, cfg: ModelConfig, c: RankCoords) -> str | None:
    """This rank's key for a consolidated key, or None if the rank does not hold it."""
    per_stage = cfg.num_layers // c.pp_size
    m = _LAYER.match(name)
    if not m:
        first, last = c.pp == 0, c.pp == c.pp_size - 1
        if name.startswith("gpt.embedding."):
            return name if first else None
        return name if last else None
    layer, suffix = int(m[1]), m[2]
    if layer // per_stage != c.pp:
        return None
    e = _EXPERT.match(suffix)
    if e:
        per_rank = cfg.num_experts // c.ep_size
        expert = int(e[1])
        if expert // per_rank != c.ep:
            return None
        suffix = f"mlp.experts.local_experts.{expert % per_rank}.{e[2]}"
    return f"gpt.decoder.layers.{layer % per_stage}.{suffix}"


def _placement(name: str, c: RankCoords) -> tuple[int | None, bool, int, int]:
    """(split dim or None, gated, this rank's index, group size) of a consolidated tensor."""
    dim, gated = _rule(name)
    if name.endswith("word_embeddings.weight") or name.endswith("output_layer.weight"):
        dim = 0
    rank, size = (c.etp, c.etp_size) if ".experts." in name else (c.tp, c.tp_size)
    return dim, gated, rank, size


def shard_state(full: dict[str, Tensor], cfg: ModelConfig, c: RankCoords) -> dict[str, Tensor]:
    out = {}
    for name, tensor in full.items():
        local = shard_name(name, cfg, c)
        if local is None:
            continue
        dim, gated, rank, size = _placement(name, c)
        out[local] = tensor if dim is None else _split(tensor, dim, rank, size, gated).clone()
    return out


def _part(n: int, rank: int, size: int) -> slice:
    step = n // size  # layouts divide exactly (ParallelLayout.check_model)
    return slice(rank * step, (rank + 1) * step)


def iter_shard(get_slice, names: list[str], cfg: ModelConfig, c: RankCoords) -> Iterator[tuple[str, Tensor]]:
    """shard_state without the consolidated state in memory, one (local name, tensor) at a time:
    `get_slice(name)` is a lazy tensor (indexing reads only those rows / columns), so a rank reads
    just its shard and can copy each piece into its model before reading the next."""
    for name in names:
        local = shard_name(name, cfg, c)
        if local is None:
            continue
        dim, gated, rank, size = _placement(name, c)
        lazy = get_slice(name)
        shape = lazy.get_shape()
        if dim is None or size == 1:
            yield local, lazy[:]
        elif gated:  # [gate ; up]: this rank's rows of each half
            half, rows = shape[0] // 2, _part(shape[0] // 2, rank, size)
            yield local, torch.cat([lazy[rows], lazy[rows.start + half:rows.stop + half]])
        else:
            cut = _part(shape[dim], rank, size)
            yield local, lazy[cut] if dim == 0 else lazy[:, cut]


def unshard_state(shards: dict[RankCoords, dict[str, Tensor]], cfg: ModelConfig, names: list[str]) -> dict[str, Tensor]:
    """Rebuild consolidated tensors `names` from every rank's shard (e.g. gathered gradients)."""
    out = {}
    for name in names:
        dim, gated = _rule(name)
        if name.endswith("word_embeddings.weight") or name.endswith("output_layer.weight"):
            dim = 0
        expert = ".experts." in name
        holders = sorted(((c, shard_name(name, cfg, c)) for c in shards if shard_name(name, cfg, c) in shards[c]),
                         key=lambda item: (item[0].etp if expert else item[0].tp))
        if not holders:
            raise KeyError(f"no rank holds {name}")
        if dim is None:
            out[name] = shards[holders[0][0]][holders[0][1]]
            continue
        size = holders[0][0].etp_size if expert else holders[0][0].tp_size
        by_rank = {}
        for c, local in holders:
            by_rank.setdefault(c.etp if expert else c.tp, shards[c][local])
        out[name] = _join([by_rank[r] for r in range(size)], dim, gated)
    return out


def current_coords() -> RankCoords:
    """This process's coordinates from megatron's parallel state."""
    from megatron.core import parallel_state as ps

    return RankCoords(
        tp=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_rank(), pp_size=ps.get_pipeline_model_parallel_world_size(),
        ep=ps.get_expert_model_parallel_rank(), ep_size=ps.get_expert_model_parallel_world_size(),
        etp=ps.get_expert_tensor_parallel_rank(), etp_size=ps.get_expert_tensor_parallel_world_size(),
    )
