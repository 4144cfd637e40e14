"""CPT block-diffusion training step: naive dense-mask attention vs our attention path, and CPU MFU.

  .venv/bin/python bench/attention_step.py [--seq-len 256] [--batch 4] [--block 32] [--steps 5]

Both models have identical weights and see the identical batch ([x_t ; x_0], 2L tokens, Eq. 3 mask
with documents). "naive" is megatron's own DotProductAttention: it materialises the 2L x 2L scores
and applies the boolean mask in a masked softmax. "ours" is the configured backend (SDPA on CPU).
CPU MFU = the step's model FLOPs per second / this machine's fp32 matmul FLOP/s, measured in the
same run. Printed for the tiny preset and a hidden-512 variant.
"""

from __future__ import annotations

import argparse
import time

import torch

from llada_core.model import build
from llada_core.model.config import ModelConfig, load_preset
from llada_core.objectives.block_diffusion import block_diffusion_loss
from llada_core.parallel.setup import init_single_process


def matmul_flops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def step_flops(cfg: ModelConfig, batch: int, tokens: int) -> float:
    """Training FLOPs of one step over `tokens` positions per sequence (fwd + bwd = 3x fwd)."""
    dense = cfg.active_params() - cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
    # output layer is a matmul, the input embedding is not
    linear = 2 * (dense + cfg.vocab_size * cfg.hidden_size) * tokens
    attention = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * tokens * tokens  # QK^T and AV, dense
    return 3 * batch * (linear + attention)


def build_model(cfg: ModelConfig, naive: bool):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    original = build.core_attention_class
    if naive:
        build.core_attention_class = lambda backend: DotProductAttention
    try:
        return build.LladaModel(cfg)
    finally:
        build.core_attention_class = original


def time_steps(model, x0, doc, block, mask_id, steps) -> float:
    g = torch.Generator().manual_seed(0)
    block_diffusion_loss(model, x0, doc, block, mask_id, generator=g).loss.backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        block_diffusion_loss(model, x0, doc, block, mask_id, generator=g).loss.backward()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    init_single_process()
    torch.manual_seed(0)
    peak = matmul_flops()
    print(f"machine fp32 matmul: {peak / 1e9:.1f} GFLOP/s; threads={torch.get_num_threads()}")
    print(f"{'model':<12}{'path':<8}{'s/step':>9}{'tokens/s':>11}{'vs naive':>10}{'MFU':>8}")
    variants = {"tiny": [], "hidden-512": ["hidden_size=512", "num_heads=8", "num_kv_heads=2", "head_dim=64",
                                          "ffn_hidden_size=1536", "moe_ffn_hidden_size=256",
                                          "shared_expert_ffn_hidden_size=256"]}
    for name, over in variants.items():
        cfg = load_preset("tiny", over + [f"max_position={args.seq_len}"])
        g = torch.Generator().manual_seed(1)
        x0 = torch.randint(8, cfg.vocab_size, (args.batch, args.seq_len), generator=g)
        doc = (torch.arange(args.seq_len) >= args.seq_len // 3).long().expand(args.batch, -1).contiguous()  # 2 docs/row
        naive = build_model(cfg, naive=True)
        ours = build_model(cfg, naive=False)
        ours.load_state_dict(naive.state_dict())
        flops = step_flops(cfg, args.batch, 2 * args.seq_len)
        base = None
        for path, model in (("naive", naive), ("ours", ours)):
            secs = time_steps(model, x0, doc, args.block, 3, args.steps)
            tps = args.batch * args.seq_len / secs
            base = base or tps
            print(f"{name:<12}{path:<8}{secs:>9.3f}{tps:>11,.0f}{tps / base:>10.2f}{flops / secs / peak:>8.1%}")


if __name__ == "__main__":
    main()
