"""The forward noising process shared by every diffusion objective (recipe Eq. 1).

For each sequence draw t = eps + (1 - eps) * U(0, 1) (or U(alpha_min, alpha_max) for SFT) and mask
each eligible token independently with probability t. Labels are NOT shifted: the logit at
position i predicts token i.

Each row's noise comes from a generator seeded by (seed, the row's global sample position): the same
sample gets the same mask whatever the parallel layout or micro-batch split, and a resumed run
redraws exactly the masks an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-3


def to_device(batch, device: torch.device):
    """A batch (dataclasses, tuples, tensors) with its tensors on `device`: objectives build batches
    and draw noise on the CPU (seeded generators), the model may live on a GPU."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, tuple):
        return tuple(to_device(x, device) for x in batch)
    return batch


@dataclass
class Noise:
    t: Tensor  # [B] mask ratio per sequence
    masked: Tensor  # [B, L] bool, True where x_t = [MASK]
    # the T2T stream (token editing, llada_core.objectives.editing), None when off: visible positions
    # holding a random token, the tokens there, the visible positions supervised besides the masked
    # ones, and their loss weight
    replaced: Tensor | None = None
    random_ids: Tensor | None = None
    supervised: Tensor | None = None
    edit_weight: float = 0.0


@dataclass
class LossOutput:
    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    logits: Tensor | None = None  # logits of the x_t positions [B, L, V]
    noise: Noise | None = None


def draw_noise(eligible: Tensor, generator: torch.Generator | None = None, t_min: float = EPS,
               t_max: float = 1.0) -> Noise:
    """t ~ U(t_min, t_max) per sequence; each eligible token masked with probability t."""
    B = eligible.shape[0]
    u = torch.rand(B, generator=generator, device=eligible.device)
    t = t_min + (t_max - t_min) * u
    masked = (torch.rand(eligible.shape, generator=generator, device=eligible.device) < t[:, None]) & eligible
    return Noise(t, masked)


def sample_generator(seed: int, position: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "big"))


def row_noise(eligible: Tensor, generators: list[torch.Generator], t_min: float = EPS, t_max: float = 1.0) -> Noise:
    """draw_noise, one row at a time, each from its own sample's generator."""
    rows = [draw_noise(eligible[i : i + 1], g, t_min, t_max) for i, g in enumerate(generators)]
    return Noise(torch.cat([r.t for r in rows]), torch.cat([r.masked for r in rows]))


def apply_noise(x0: Tensor, noise: Noise, mask_id: int) -> Tensor:
    xt = torch.where(noise.masked, torch.full_like(x0, mask_id), x0)
    return xt if noise.replaced is None else torch.where(noise.replaced, noise.random_ids, xt)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """-log p(target) per position, in fp32: [B, L]."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def positions(batch: int, length: int, device) -> Tensor:
    return torch.arange(length, device=device).expand(batch, length)


def packed_tensors(rows: list[dict]) -> tuple[Tensor, Tensor]:
    """(input_ids, doc_ids) of packed pretraining rows."""
    x0 = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    doc = torch.tensor([r["doc_ids"] for r in rows], dtype=torch.long)
    return x0, doc


def packed_tokens(rows: list[dict]) -> int:
    return sum(sum(1 for d in r["doc_ids"] if d >= 0) for r in rows)
