"""Top-k checkpoint merge (recipe, after CPT): average the weights of the k best checkpoints of a
stage by a validation metric into a new checkpoint. CHOICE: k = 3, lower metric is better (ELBO
perplexity / loss). Averaging is done in fp64 and cast back, so the order of inputs does not matter;
tensor by tensor, so memory does not grow with k or the model."""

from __future__ import annotations

from pathlib import Path

from llada_core.checkpoint import CheckpointReader, save_checkpoint
from llada_core.model.hf_config import CheckpointError
from llada_core.version import code_version


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
            total = first.tensor(name).double()
            for r in readers[1:]:
                total += r.tensor(name).double()
            yield name, (total / len(readers)).to(first.tensor(name).dtype)

    meta = {"merged_from": [{"path": str(p), "metric": metrics[p]} for p in chosen], "k": len(chosen),
            "lower_is_better": lower_is_better, "code_version": code_version()}
    save_checkpoint(out, first.cfg, averaged(), first.tok, meta)
    return meta


__all__ = ["merge_top_k", "select_top_k"]
