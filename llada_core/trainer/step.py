"""Rows of a micro-batch -> the stage objective's loss. No parallel bookkeeping here.

Noise (t, masks) is drawn from a generator seeded by (seed, step, micro-batch, DP rank): a resumed
run redraws exactly the masks an uninterrupted run would, and the TP / PP ranks that share a
micro-batch draw the same ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from llada_core.objectives.ar import ar_loss
from llada_core.objectives.block_diffusion import block_diffusion_loss
from llada_core.objectives.cap import cap_loss
from llada_core.objectives.common import LossOutput
from llada_core.objectives.dpo import dpo_loss
from llada_core.objectives.sft import pad_examples, sft_loss
from llada_core.trainer.config import StageConfig


@dataclass(frozen=True)
class TokenIds:
    mask: int
    pad: int

    @classmethod
    def from_manifest(cls, manifest: dict) -> TokenIds:
        special = manifest["tokenizer"]["special_tokens"]
        return cls(mask=special["mask"]["id"], pad=special["pad"]["id"])


def noise_generator(seed: int, step: int, micro: int, dp_rank: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{dp_rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "big"))


def block_size_at(cfg: StageConfig, tokens: int, seq_len: int) -> int:
    if cfg.schedule is not None:
        return cfg.schedule.build().at(cfg.schedule_offset_tokens + tokens).block_size
    return min(cfg.objective_cfg.block_size, seq_len)


def micro_batch_loss(model, reference, cfg: StageConfig, rows: list[dict], ids: TokenIds, step: int,
                     tokens_seen: int, generator: torch.Generator) -> LossOutput:
    obj = cfg.objective_cfg
    if cfg.objective in ("ar", "cpt"):
        x0 = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        doc = torch.tensor([r["doc_ids"] for r in rows], dtype=torch.long)
        if cfg.objective == "ar":
            return ar_loss(model, x0, doc)
        denoiser = model
        if obj.mask_noise_std and step < obj.mask_noise_steps:
            def denoiser(i, p, a):
                return model(i, p, a, mask_noise=(ids.mask, obj.mask_noise_std, generator))
        block = block_size_at(cfg, tokens_seen, x0.shape[1])
        return block_diffusion_loss(denoiser, x0, doc, block, ids.mask, generator=generator)
    if cfg.objective in ("sft", "cap"):
        batch = pad_examples([(r["input_ids"], r["prompt_len"]) for r in rows], obj.block_size, ids.pad)
        kw = dict(alpha_min=obj.alpha_min, alpha_max=obj.alpha_max,
                  complementary_masking=obj.complementary_masking, generator=generator)
        if cfg.objective == "sft":
            return sft_loss(model, batch, obj.block_size, ids.mask, **kw)
        return cap_loss(model, batch, obj.block_size, ids.mask, lam=obj.cap_lambda, **kw)
    chosen = pad_examples([(r["chosen_ids"], r["prompt_len"]) for r in rows], obj.block_size, ids.pad)
    rejected = pad_examples([(r["rejected_ids"], r["prompt_len"]) for r in rows], obj.block_size, ids.pad)
    return dpo_loss(model, reference, chosen, rejected, obj.block_size, ids.mask, beta=obj.dpo_beta, generator=generator)
