"""Token editing, the training side (LLaDA2.1, arXiv 2602.08676): the T2T stream beside the mask stream.

The mask stream (M2T) hides tokens behind [MASK] and the loss restores them (Eq. 1 / Eq. 5). The T2T
stream also corrupts tokens the mask stream left VISIBLE: each eligible unmasked position becomes a
uniformly random vocabulary token with probability `ratio` (never [MASK]: that is the other stream).
The loss then also reads visible positions:

  L = L_M2T + weight * sum_{i visible, supervised} -log p(x0_i | x_t)    (normalised like L_M2T)

CHOICES (defaults), and why:
- ratio 0.1 when on (0 = off, the objective is then exactly the mask-only one): enough wrong
  tokens for the editor to learn what a wrong token looks like, few enough that the visible context
  stays mostly right (the decoder's context is mostly right too: it accepts only confident tokens).
- supervise "visible": restore the replaced positions AND keep the untouched visible ones. Trained
  only where the input is wrong ("replaced"), the model would learn that a visible token is never
  the answer, and the editor, which rewrites any decoded token whose prediction differs
  confidently, would rewrite correct tokens; supervising the kept ones makes "keep" the default.
- weight 1.0, without the 1/t of the mask stream: visible tokens are not ELBO terms of the masking
  process; at t -> 0 a 1/t weight would make the (nearly all visible) block dominate the loss.
Eligible positions are the mask stream's: every real token in CPT, the response (+ EOS tail) in
SFT / CAP; prompt tokens are never replaced. Random tokens come from their own per-row generators,
so the masks are the mask-only objective's, bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from llada_core.config import StrictModel
from llada_core.objectives.common import Noise, sample_generator

# row generators seed + 2 (+ 3 for a complementary copy): not the mask's (+0) nor the [MASK]-embedding noise's (+1)
SEED_OFFSET = 2


class EditConfig(StrictModel):
    ratio: float = Field(0.0, ge=0, lt=1)  # probability that a visible eligible token is replaced; 0 = off
    supervise: Literal["visible", "replaced"] = "visible"
    weight: float = Field(1.0, ge=0)


def add_random_tokens(noise: Noise, eligible: Tensor, generators: list[torch.Generator], cfg: EditConfig,
                      vocab_size: int, mask_id: int) -> Noise:
    """The T2T stream on top of `noise` (rows of `eligible` [B, L], one generator per row)."""
    if cfg.ratio == 0:
        return noise
    L = eligible.shape[1]
    draws, ids = [], []
    for g in generators:
        draws.append(torch.rand(L, generator=g) < cfg.ratio)
        token = torch.randint(0, vocab_size - 1, (L,), generator=g)
        ids.append(token + (token >= mask_id).long())  # uniform over the vocabulary without [MASK]
    visible = eligible & ~noise.masked
    replaced = visible & torch.stack(draws).to(eligible.device)
    supervised = visible if cfg.supervise == "visible" else replaced
    return dataclasses.replace(noise, replaced=replaced, random_ids=torch.stack(ids).to(eligible.device),
                               supervised=supervised, edit_weight=cfg.weight)


def row_generators(seed: int, positions: list[int], copies: int = 1) -> list[torch.Generator]:
    """One generator per row, `copies` blocks of rows (a complementary pair: the same sample twice)."""
    return [sample_generator(seed + SEED_OFFSET + c, p) for c in range(copies) for p in positions]


def edit_metrics(noise: Noise) -> dict[str, int]:
    return {} if noise.replaced is None else {"edit_tokens": int(noise.replaced.sum())}
