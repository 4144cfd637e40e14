"""Parallel block decoding (R§5.4, §6) for any denoiser `model(ids, pos, allowed) -> logits`.

Blocks are aligned to absolute positions (b(i) = i // L_B), as in training, so the first block may
be the remainder of the block the prompt ends in. Each block starts all-[MASK]; at every step the
model predicts all masked positions, and every one whose confidence (max probability) >= threshold
is accepted; if fewer than `min_accept` pass, the `min_accept` most confident are. Finished blocks
are clean context under the block-causal layout (the inference face of the Eq. 3 mask): a clean
block attends only to itself and earlier blocks, the block being decoded to itself and everything
before it.
TPF (tokens per forward) = generated tokens / model forward calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llada_core import masks


@dataclass
class DecodeResult:
    tokens: list[int]  # generated tokens (up to and including EOS when it was produced)
    forward_passes: int
    steps_per_block: list[int]

    @property
    def tpf(self) -> float:
        return len(self.tokens) / max(self.forward_passes, 1)


@torch.no_grad()
def generate(model, prompt: list[int], *, mask_id: int, eos_id: int, max_new_tokens: int, max_len: int,
             block_size: int = 32, threshold: float = 0.95, min_accept: int = 1, temperature: float = 0.0,
             stop_ids: tuple[int, ...] = (), generator: torch.Generator | None = None,
             device: str | torch.device = "cpu") -> DecodeResult:
    if not prompt:
        raise ValueError("empty prompt")
    if max_new_tokens < 1 or min_accept < 1 or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"bad decode settings: max_new_tokens={max_new_tokens}, min_accept={min_accept}, threshold={threshold}")
    start = len(prompt)
    end_all = -(-(start + max_new_tokens) // block_size) * block_size  # whole blocks
    if end_all > max_len:
        raise ValueError(
            f"prompt of {start} tokens + {max_new_tokens} new tokens (rounded up to blocks of {block_size}: "
            f"{end_all}) exceeds the model context of {max_len} tokens"
        )
    seq = torch.full((1, end_all), mask_id, dtype=torch.long, device=device)
    seq[0, :start] = torch.tensor(prompt, device=device)
    stops = {eos_id, *stop_ids}
    passes, steps_per_block = 0, []
    pos = start
    while pos < start + max_new_tokens:
        block_end = (pos // block_size + 1) * block_size
        steps = 0
        while (seq[0, pos:block_end] == mask_id).any():
            ids = seq[:, :block_end]
            positions = torch.arange(block_end, device=device)[None]
            allowed = masks.block_causal_mask(torch.zeros_like(ids), block_size)
            logits = model(ids, positions, allowed)[0, pos:block_end].float()
            logits[:, mask_id] = float("-inf")  # never "predict" the noise token
            probs = torch.softmax(logits / temperature if temperature > 0 else logits, dim=-1)
            if temperature > 0:
                choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                choice = probs.argmax(-1)
            confidence = probs.gather(-1, choice[:, None]).squeeze(-1)
            still = seq[0, pos:block_end] == mask_id
            confidence = torch.where(still, confidence, torch.full_like(confidence, -1.0))
            accept = still & (confidence >= threshold)
            if int(accept.sum()) < min_accept:
                k = min(min_accept, int(still.sum()))
                accept = torch.zeros_like(still)
                accept[confidence.topk(k).indices] = True
            seq[0, pos:block_end] = torch.where(accept, choice, seq[0, pos:block_end])
            passes += 1
            steps += 1
        steps_per_block.append(steps)
        block = seq[0, pos:block_end].tolist()
        hit = next((i for i, t in enumerate(block) if t in stops), None)
        if hit is not None:
            return DecodeResult(seq[0, start : pos + hit + 1].tolist(), passes, steps_per_block)
        pos = block_end
    return DecodeResult(seq[0, start : start + max_new_tokens].tolist(), passes, steps_per_block)
