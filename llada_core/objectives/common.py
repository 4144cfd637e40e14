"""The forward noising process shared by every diffusion objective (recipe Eq. 1).

For each sequence draw t = eps + (1 - eps) * U(0, 1) (or U(alpha_min, alpha_max) for SFT) and mask
each eligible token independently with probability t. Labels are NOT shifted: the logit at
position i predicts token i.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-3


@dataclass
class Noise:
    t: Tensor  # [B] mask ratio per sequence
    masked: Tensor  # [B, L] bool, True where x_t = [MASK]


@dataclass
class LossOutput:
    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    logits: Tensor | None = None  # logits of the x_t positions [B, L, V]
    noise: Noise | None = None


def draw_noise(eligible: Tensor, generator: torch.Generator | None = None, t_min: float = EPS, t_max: float = 1.0) -> Noise:
    """t ~ U(t_min, t_max) per sequence; each eligible token masked with probability t."""
    B = eligible.shape[0]
    u = torch.rand(B, generator=generator, device=eligible.device)
    t = t_min + (t_max - t_min) * u
    masked = (torch.rand(eligible.shape, generator=generator, device=eligible.device) < t[:, None]) & eligible
    return Noise(t, masked)


def apply_noise(x0: Tensor, noise: Noise, mask_id: int) -> Tensor:
    return torch.where(noise.masked, torch.full_like(x0, mask_id), x0)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """-log p(target) per position, in fp32: [B, L]."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def positions(batch: int, length: int, device) -> Tensor:
    return torch.arange(length, device=device).expand(batch, length)


def add_mask_embedding_noise(embeddings: Tensor, input_ids: Tensor, mask_id: int, std: float,
                             generator: torch.Generator | None = None) -> Tensor:
    """Early-CPT stabiliser (R§4): Gaussian noise on the embedding output at [MASK] positions,
    whose embedding an AR base model left near zero. embeddings: [B, S, H]."""
    if std <= 0:
        return embeddings
    noise = torch.randn(embeddings.shape, generator=generator, device=embeddings.device, dtype=embeddings.dtype)
    return embeddings + std * noise * (input_ids == mask_id).unsqueeze(-1).to(embeddings.dtype)
