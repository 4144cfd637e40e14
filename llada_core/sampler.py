"""Parallel block decoding (R§5.4, §6) for any denoiser `model(ids, pos, allowed) -> logits`.

Blocks are aligned to absolute positions (b(i) = i // L_B), as in training, so the first block may
be the remainder of the block the prompt ends in. Each block starts all-[MASK]; at every step the
model predicts all masked positions, and every one whose confidence (max probability) >= threshold
is accepted; if fewer than `min_accept` pass, the `min_accept` most confident are. Finished blocks
are clean context under the block-causal layout (the inference face of the Eq. 3 mask): a clean
block attends only to itself and earlier blocks, the block being decoded to itself and everything
before it.
With a model that offers `kv_cache()` (LladaModel) the keys/values of finished blocks are
computed once and reused: each forward then processes only the block being decoded, plus, on its
first step, the clean tokens not cached yet (the block just finished, or the prompt), which that
same forward commits to the cache; otherwise every step recomputes the whole prefix.
TPF (tokens per forward) = generated tokens / model forward calls.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from llada_core import masks


@dataclass
class DecodeResult:
    tokens: list[int]  # generated tokens (up to and including EOS when it was produced)
    forward_passes: int
    steps_per_block: list[int]
    tokens_processed: int = 0  # positions run through the model, summed over forwards

    @property
    def tpf(self) -> float:
        return len(self.tokens) / max(self.forward_passes, 1)


def _recompute_logits(model, seq, start: int, end: int, block_size: int, cache=None):
    """Logits of positions [start, end) from a forward over the whole prefix [0, end)."""
    ids = seq[:, :end]
    positions = torch.arange(end, device=seq.device)[None]
    allowed = masks.block_causal_mask(torch.zeros_like(ids), block_size)
    return model(ids, positions, allowed)[0, start:end], end


def _cached_logits(model, seq, start: int, end: int, block_size: int, cache=None):
    """Same logits, running only the tokens after the cache; clean ones before `start` get committed."""
    first = cache.length
    q = torch.arange(first, end, device=seq.device)
    k = torch.arange(end, device=seq.device)
    allowed = masks.block_causal_allowed(q[:, None], k[None, :], block_size)[None]
    logits = cache.run(model, seq[:, first:end], q[None], allowed, commit=start - first)
    return logits[0, start - first :], end - first


@torch.no_grad()
def generate(model, prompt: list[int], *, mask_id: int, eos_id: int, max_new_tokens: int, max_len: int,
             block_size: int = 32, threshold: float = 0.95, min_accept: int = 1, temperature: float = 0.0,
             stop_ids: tuple[int, ...] = (), generator: torch.Generator | None = None,
             device: str | torch.device = "cpu", use_cache: bool = True) -> DecodeResult:
    if not prompt:
        raise ValueError("empty prompt")
    if max_new_tokens < 1 or min_accept < 1 or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"bad decode settings: max_new_tokens={max_new_tokens}, min_accept={min_accept}, "
                         f"threshold={threshold}")
    start = len(prompt)
    end_all = -(-(start + max_new_tokens) // block_size) * block_size  # whole blocks
    if end_all > max_len:
        raise ValueError(
            f"prompt of {start} tokens + {max_new_tokens} new tokens (rounded up to blocks of {block_size}: "
            f"{end_all}) exceeds the model context of {max_len} tokens"
        )
    seq = torch.full((1, end_all), mask_id, dtype=torch.long, device=device)
    seq[0, :start] = torch.tensor(prompt, device=device)
    cached = use_cache and hasattr(model, "kv_cache")
    with model.kv_cache() if cached else contextlib.nullcontext() as cache:
        return _decode(model, seq, start, max_new_tokens, mask_id, {eos_id, *stop_ids}, block_size, threshold,
                       min_accept, temperature, generator, _cached_logits if cached else _recompute_logits, cache)


def _decode(model, seq, start, max_new_tokens, mask_id, stops, block_size, threshold, min_accept, temperature,
            generator, block_logits, cache) -> DecodeResult:
    passes, steps_per_block, processed = 0, [], 0
    pos = start
    while pos < start + max_new_tokens:
        block_end = (pos // block_size + 1) * block_size
        steps = 0
        block_start = pos - pos % block_size
        while (seq[0, pos:block_end] == mask_id).any():
            logits, n = block_logits(model, seq, block_start, block_end, block_size, cache)
            logits = logits[pos - block_start :].float()
            processed += n
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
            if _finished(seq[0, pos:block_end].tolist(), stops, mask_id):
                break  # a stop token with everything before it decoded: the rest is never read
        steps_per_block.append(steps)
        block = seq[0, pos:block_end].tolist()
        hit = next((i for i, t in enumerate(block) if t in stops), None)
        if hit is not None:
            return DecodeResult(seq[0, start : pos + hit + 1].tolist(), passes, steps_per_block, processed)
        pos = block_end
    return DecodeResult(seq[0, start : start + max_new_tokens].tolist(), passes, steps_per_block, processed)


def _finished(block: list[int], stops: set[int], mask_id: int) -> bool:
    for token in block:
        if token == mask_id:
            return False
        if token in stops:
            return True
    return False


def generate_text(model, tok, prompt: str | list[dict], **kw) -> tuple[str, DecodeResult]:
    """Chat-templated decoding: the answer text (up to <|eot|> / EOS) and the decode statistics."""
    from llada_core.data.chat import encode_prompt

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    stops = (tok.id_of("eot"), tok.id_of("eos"))
    result = generate(model, encode_prompt(tok, messages), mask_id=tok.id_of("mask"), eos_id=stops[1],
                      stop_ids=stops[:1], **kw)
    return tok.decode([t for t in result.tokens if t not in stops]), result
