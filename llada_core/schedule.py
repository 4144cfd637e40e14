"""Block-size Warmup-Stable-Decay (WSD) schedule of LLaDA2.0 continual pre-training (R§4).

One object maps training progress in tokens to (phase, block size, learning rate):
  warm-up : block diffusion with L_B = 1 -> 4 -> 32 -> 64 -> L   (L_B = 1 is the AR base)
  stable  : L_B = L, full-sequence masked diffusion (MDLM, Eq. 2)
  decay   : L_B = L/2 -> L/4 -> ... -> decay_min_block             (CHOICE: halving, equal tokens)
The learning rate follows its own WSD shape on the same token axis: linear warm-up to `lr`,
constant, then a linear or cosine decay to `min_lr` across the decay phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from llada_core.config import StrictModel

PHASES = ("warmup", "stable", "decay")


@dataclass(frozen=True)
class Segment:
    phase: str
    block_size: int
    start: int  # token offset, inclusive
    end: int  # token offset, exclusive


@dataclass(frozen=True)
class SchedulePoint:
    phase: str
    block_size: int
    lr: float
    segment: int  # index into WSDSchedule.segments


class WSDConfig(StrictModel):
    seq_len: int = Field(ge=2)
    warmup_block_sizes: list[int] = [1, 4, 32, 64]  # L is appended: the last warm-up step is one block
    warmup_tokens_per_block: int = Field(ge=0)
    stable_tokens: int = Field(ge=0)
    decay_min_block: int = Field(32, ge=1)
    decay_block_sizes: list[int] | None = None  # explicit decay steps; default halving L/2 .. decay_min_block
    decay_tokens_per_block: int = Field(ge=0)
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(3e-5, ge=0)
    lr_warmup_tokens: int = Field(0, ge=0)
    lr_decay: Literal["linear", "cosine"] = "linear"

    @model_validator(mode="after")
    def _check(self):
        L = self.seq_len
        decay_key = "decay_block_sizes" if self.decay_block_sizes is not None else "decay_min_block"
        for key, sizes in (("warmup_block_sizes", self.warmup_block_sizes),
                           (decay_key, self.decay_block_sizes or [self.decay_min_block])):
            for b in sizes:
                if b < 1 or L % b:
                    raise ValueError(f"{key}: block size {b} does not divide seq_len={L}")
        if any(b >= a for a, b in zip(self.warmup_block_sizes[1:], self.warmup_block_sizes, strict=False)):
            raise ValueError(f"warmup_block_sizes: must increase strictly, got {self.warmup_block_sizes}")
        if self.warmup_block_sizes and self.warmup_block_sizes[-1] >= L:
            raise ValueError(f"warmup_block_sizes: must stay below seq_len={L} (L is appended), "
                             f"got {self.warmup_block_sizes}")
        if self.decay_block_sizes is not None and any(
                b >= a for a, b in zip(self.decay_block_sizes, self.decay_block_sizes[1:], strict=False)):
            raise ValueError(f"decay_block_sizes: must decrease strictly, got {self.decay_block_sizes}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr} exceeds lr={self.lr}")
        return self

    def decay_sizes(self) -> list[int]:
        if self.decay_block_sizes is not None:
            return list(self.decay_block_sizes)
        sizes, b = [], self.seq_len // 2
        while b >= self.decay_min_block and b >= 1:
            sizes.append(b)
            b //= 2
        return sizes

    def build(self) -> WSDSchedule:
        return WSDSchedule(self)


class WSDSchedule:
    def __init__(self, cfg: WSDConfig):
        self.cfg = cfg
        plan = [("warmup", b, cfg.warmup_tokens_per_block) for b in [*cfg.warmup_block_sizes, cfg.seq_len]]
        plan.append(("stable", cfg.seq_len, cfg.stable_tokens))
        plan += [("decay", b, cfg.decay_tokens_per_block) for b in cfg.decay_sizes()]
        self.segments: list[Segment] = []
        start = 0
        for phase, block, tokens in plan:
            if tokens:
                self.segments.append(Segment(phase, block, start, start + tokens))
                start += tokens
        self.total_tokens = start

    def phase_range(self, phase: str) -> tuple[int, int]:
        segs = [s for s in self.segments if s.phase == phase]
        if not segs:
            raise ValueError(f"phase {phase!r} has no tokens in this schedule")
        return segs[0].start, segs[-1].end

    def lr_at(self, tokens: int) -> float:
        cfg = self.cfg
        if cfg.lr_warmup_tokens and tokens < cfg.lr_warmup_tokens:
            return cfg.lr * (tokens + 1) / cfg.lr_warmup_tokens
        decay = [s for s in self.segments if s.phase == "decay"]
        if not decay or tokens < decay[0].start:
            return cfg.lr
        frac = min(1.0, (tokens - decay[0].start) / max(1, decay[-1].end - decay[0].start))
        if cfg.lr_decay == "cosine":
            frac = 0.5 * (1 - math.cos(math.pi * frac))
        return cfg.lr + (cfg.min_lr - cfg.lr) * frac

    def at(self, tokens: int) -> SchedulePoint:
        """Where `tokens` consumed tokens put training; past the end, the last segment holds."""
        if not self.segments:
            raise ValueError("empty schedule: every token budget is 0")
        idx = next((i for i, s in enumerate(self.segments) if tokens < s.end), len(self.segments) - 1)
        seg = self.segments[idx]
        return SchedulePoint(seg.phase, seg.block_size, self.lr_at(tokens), idx)

    def describe(self) -> list[dict]:
        """Loggable table of the schedule (phase, block size, token range)."""
        return [{"phase": s.phase, "block_size": s.block_size, "start": s.start, "end": s.end} for s in self.segments]
