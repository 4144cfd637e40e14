"""Top-k checkpoint merge (recipe, after CPT): average the weights of the k best checkpoints of a
stage by a validation metric into a new checkpoint. CHOICE: k = 3, lower metric is better (ELBO
perplexity / loss). Averaging is done in fp64 and cast back, so the order of inputs does not matter;
tensor by tensor and row-chunk by row-chunk, so memory does not grow with k or the model: one
output tensor and k chunks of 64 MB."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from llada_core.checkpoint import CheckpointReader, save_checkpoint
from llada_core.model.hf_config import CheckpointError
from llada_core.version import code_version

CHUNK_BYTES = 64 << 20


def _mean(tensors: list) -> torch.Tensor:
    total = tensors[0].double()
    for t in tensors[1:]:
        total += t.double()
    return (total / len(tensors)).to(tensors[0].dtype)


def select_top_k(metrics: dict[str, float], k: int = 3, lower_is_better: bool = True) -> list[str]:
    """The k best checkpoint paths by metric (ties broken by path for determinism)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not metrics:
        raise CheckpointError("no checkpoints to merge")
    sign = 1 if lower_is_better else -1
    return [path for path, _ in sorted(metrics.items(), key=lambda kv: (sign * kv[1], kv[0]))[:k]]


def merge_top_k(metrics: dict[str, float], out: str | Path, k: int = 3, lower_is_better: bool = True) -> dict:
    """Streamed: one tensor of each chosen checkpoint in memory at a time (plus the output part)."""
    chosen = select_top_k(metrics, k, lower_is_better)
    readers = [CheckpointReader(p) for p in chosen]  # all verified before anything is averaged
    first = readers[0]
    for path, r in zip(chosen[1:], readers[1:], strict=True):
        if r.cfg != first.cfg or r.tok.digest != first.tok.digest:
            raise CheckpointError(f"{path}: model config or tokenizer differs from {chosen[0]}; cannot average")

    def averaged():
        for name in first.names():
            shape = first.slice(name).get_shape()
            if len(shape) < 1 or shape[0] < 2:
                yield name, _mean([r.tensor(name) for r in readers])
                continue
            row = max(1, math.prod(shape[1:])) * 8  # fp64 bytes of one row
            out = None
            for a in range(0, shape[0], max(1, CHUNK_BYTES // row)):  # k row-chunks in fp64, not k tensors
                b = min(a + max(1, CHUNK_BYTES // row), shape[0])
                part = _mean([r.slice(name)[a:b] for r in readers])
                out = torch.empty(shape, dtype=part.dtype) if out is None else out
                out[a:b] = part
            yield name, out

    meta = {"merged_from": [{"path": str(p), "metric": metrics[p]} for p in chosen], "k": len(chosen),
            "lower_is_better": lower_is_better, "code_version": code_version()}
    save_checkpoint(out, first.cfg, averaged(), first.tok, meta)
    return meta


__all__ = ["merge_top_k", "select_top_k"]
