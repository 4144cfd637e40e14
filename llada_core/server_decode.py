"""What a diffusion-LM server's default decoder does with an exported model, to check an export
against it here (no server runs on this machine).

SGLang's `LowConfidence` algorithm (its default for LLaDA2MoeModelLM) and LLaDA2's public
generate(): blocks of `block_size` over the whole sequence, prompt included (the block-causal
layout the model trained with); inside a block, each forward takes the argmax and its softmax
probability over the FULL vocabulary ([MASK] and unused ids included, unlike llada_core.sampler,
which never predicts [MASK]), fills every masked position whose probability exceeds `threshold`,
or the single most confident one; the whole block is decoded (at most `block_size` forwards) before
the next. The answer ends at the first stop token of a finished block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llada_core import masks


@dataclass
class ServerDecode:
    tokens: list[int]  # up to and including the first stop token
    forward_passes: int
    confidences: list[float]  # the probability of every token filled, in fill order


@torch.no_grad()
def low_confidence_decode(model, prompt: list[int], *, mask_id: int, stop_ids: set[int], max_new_tokens: int,
                          block_size: int = 32, threshold: float = 0.95) -> ServerDecode:
    total = -(-(len(prompt) + max_new_tokens) // block_size) * block_size
    seq = torch.full((1, total), mask_id, dtype=torch.long)
    seq[0, : len(prompt)] = torch.tensor(prompt)
    forwards, confidences = 0, []
    for end in range(block_size, total + 1, block_size):
        if end <= len(prompt):
            continue
        for _ in range(block_size):  # as SGLang: a model that keeps predicting [MASK] cannot loop for ever
            masked = seq[0, :end] == mask_id
            if not masked.any():
                break
            ids = seq[:, :end]
            allowed = masks.block_causal_mask(torch.zeros_like(ids), block_size)
            probs = model(ids, torch.arange(end)[None], allowed)[0].float().softmax(-1)
            forwards += 1
            p, x = probs.max(-1)
            p = torch.where(masked, p, -1.0)
            fill = p > threshold
            if not fill.any():
                fill[p.argmax()] = True
            seq[0, :end][fill] = x[fill]
            confidences += p[fill].tolist()
        answer = seq[0, len(prompt) : end].tolist()
        stop = next((i for i, t in enumerate(answer) if t in stop_ids), None)
        if stop is not None:
            return ServerDecode(answer[: stop + 1], forwards, confidences)
    return ServerDecode(seq[0, len(prompt) : len(prompt) + max_new_tokens].tolist(), forwards, confidences)
