"""Top-k checkpoint merge (recipe, after CPT): average the weights of the k best checkpoints of a
stage by a validation metric into a new checkpoint. CHOICE: k = 3, lower metric is better (ELBO
perplexity / loss). Averaging is done in fp64 and cast back, so the order of inputs does not matter."""

from __future__ import annotations

from pathlib import Path

from llada_core.checkpoint import load_checkpoint, save_checkpoint
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
    chosen = select_top_k(metrics, k, lower_is_better)
    cfg, total, tok, _ = load_checkpoint(chosen[0])
    dtypes = {name: t.dtype for name, t in total.items()}
    total = {name: t.double() for name, t in total.items()}
    for path in chosen[1:]:
        other_cfg, state, other_tok, _ = load_checkpoint(path)
        if other_cfg != cfg or other_tok.digest != tok.digest:
            raise CheckpointError(f"{path}: model config or tokenizer differs from {chosen[0]}; cannot average")
        for name, tensor in state.items():
            total[name] += tensor.double()
    merged = ((name, (t / len(chosen)).to(dtypes[name])) for name, t in total.items())
    meta = {"merged_from": [{"path": str(p), "metric": metrics[p]} for p in chosen], "k": len(chosen),
            "lower_is_better": lower_is_better, "code_version": code_version()}
    save_checkpoint(out, cfg, merged, tok, meta)
    return meta


__all__ = ["merge_top_k", "select_top_k"]
