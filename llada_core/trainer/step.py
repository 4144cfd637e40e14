"""Rows of a micro-batch -> the stage objective's loss. No parallel bookkeeping here.

Each row's noise (t and its mask) is drawn from a generator seeded by (seed, the row's global sample
position): the same sample gets the same mask whatever the parallel layout or micro-batch split,
and a resumed run redraws exactly the masks an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from llada_core.objectives.ar import ar_loss
from llada_core.objectives.block_diffusion import block_diffusion_from_logits, denoise_inputs
from llada_core.objectives.cap import cap_loss
from llada_core.objectives.common import EPS, LossOutput, Noise, apply_noise, draw_noise
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


def sample_generator(seed: int, position: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "big"))


def row_noise(eligible: torch.Tensor, generators: list[torch.Generator], t_min: float = EPS, t_max: float = 1.0) -> Noise:
    """draw_noise, one row at a time, each from its own sample's generator."""
    rows = [draw_noise(eligible[i : i + 1], g, t_min, t_max) for i, g in enumerate(generators)]
    return Noise(torch.cat([r.t for r in rows]), torch.cat([r.masked for r in rows]))


def block_size_at(cfg: StageConfig, tokens: int, seq_len: int) -> int:
    if cfg.schedule is not None:
        return cfg.schedule.build().at(cfg.schedule_offset_tokens + tokens).block_size
    return min(cfg.objective_cfg.block_size, seq_len)


def row_tokens(rows: list[dict]) -> int:
    """Real (non-padding) tokens of a micro-batch's rows: packed rows, examples or preference pairs."""
    if rows and "doc_ids" in rows[0]:
        return sum(sum(1 for d in r["doc_ids"] if d >= 0) for r in rows)
    if rows and "chosen_ids" in rows[0]:
        return sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    return sum(len(r["input_ids"]) for r in rows)


def packed_tensors(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    doc = torch.tensor([r["doc_ids"] for r in rows], dtype=torch.long)
    return x0, doc


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("model inputs captured")
        self.call = (args, kwargs)


def _capture(*args, **kwargs):
    raise _Captured(args, kwargs)


def capture_model_call(objective) -> tuple[tuple, dict]:
    """The (args, kwargs) an objective passes to its model, without running the model or the loss:
    what the first pipeline stage needs. Only for objectives that call the model once."""
    try:
        objective(_capture)
    except _Captured as captured:
        return captured.call
    raise RuntimeError("the objective never called the model")


def micro_batch_loss(model, reference, cfg: StageConfig, rows: list[dict], positions: list[int], ids: TokenIds,
                     step: int, tokens_seen: int) -> LossOutput:
    obj = cfg.objective_cfg
    if cfg.objective == "ar":
        return ar_loss(model, *packed_tensors(rows))
    if cfg.objective == "cpt":
        denoiser = model
        if obj.mask_noise_std and step < obj.mask_noise_steps:
            embed_gen = sample_generator(cfg.seed + 1, positions[0])

            def denoiser(i, p, a):
                return model(i, p, a, mask_noise=(ids.mask, obj.mask_noise_std, embed_gen))
        x0, doc = packed_tensors(rows)
        noise = row_noise(doc >= 0, [sample_generator(cfg.seed, p) for p in positions])
        block = block_size_at(cfg, tokens_seen, x0.shape[1])
        logits = denoiser(*denoise_inputs(apply_noise(x0, noise, ids.mask), x0, doc, block))
        return block_diffusion_from_logits(logits, x0, doc, block, noise)  # Eq. 1
    gens = [sample_generator(cfg.seed, p) for p in positions]
    if cfg.objective in ("sft", "cap"):
        batch = pad_examples([(r["input_ids"], r["prompt_len"]) for r in rows], obj.block_size, ids.pad, ids.mask)
        kw = dict(complementary_masking=obj.complementary_masking,
                  noise=row_noise(batch.response, gens, obj.alpha_min, obj.alpha_max))
        if cfg.objective == "sft":
            return sft_loss(model, batch, obj.block_size, ids.mask, **kw)
        return cap_loss(model, batch, obj.block_size, ids.mask, lam=obj.cap_lambda, **kw)
    chosen = pad_examples([(r["chosen_ids"], r["prompt_len"]) for r in rows], obj.block_size, ids.pad, ids.mask)
    rejected = pad_examples([(r["rejected_ids"], r["prompt_len"]) for r in rows], obj.block_size, ids.pad, ids.mask)
    noise = (row_noise(chosen.response, gens), row_noise(rejected.response, gens))
    return dpo_loss(model, reference, chosen, rejected, obj.block_size, ids.mask, beta=obj.dpo_beta, noise=noise)
