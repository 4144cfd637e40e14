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
`generate_batch` decodes many prompts in one forward per step (evaluation).
`left_to_right=True` fills exactly one token per forward, the leftmost masked one: the AR-style
baseline on the same model.
Token editing (LLaDA2.1, `edit_threshold`): every forward also rewrites the current block's decoded
tokens whose prediction differs with confidence > edit_threshold, and a block without [MASK] gets
up to `edit_steps` more forwards of editing (the first that changes nothing ends it); the prompt
and finished blocks are never edited (no multi-block editing).
TPF (tokens per forward) = generated tokens / model forward calls, editing forwards included.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Rule:
    """Which masked positions of the block one forward fills."""

    mask_id: int
    threshold: float = 0.95
    min_accept: int = 1
    temperature: float = 0.0
    generator: torch.Generator | None = None
    left_to_right: bool = False  # exactly one token per forward, the leftmost masked: the AR-style baseline
    # token editing (LLaDA2.1): a decoded token of the current block whose prediction differs with
    # confidence > edit_threshold is replaced; after the block has no [MASK] left, up to edit_steps
    # more forwards edit it (stopping at the first that changes nothing). None (or > 1): no editing
    edit_threshold: float | None = None
    edit_steps: int = 16

    @property
    def editing(self) -> bool:
        return self.edit_threshold is not None and self.edit_threshold <= 1.0

    @property
    def post_block_steps(self) -> int:
        return self.edit_steps if self.editing else 0


def _predict(logits, rule: Rule):
    """(choice, its probability) per position; [MASK] is never predicted."""
    logits = logits.float()
    logits[:, rule.mask_id] = float("-inf")  # never "predict" the noise token
    t = rule.temperature
    probs = torch.softmax(logits / t if t > 0 else logits, dim=-1)
    if t > 0:
        choice = torch.multinomial(probs, 1, generator=rule.generator).squeeze(-1)
    else:
        choice = probs.argmax(-1)
    return choice, probs.gather(-1, choice[:, None]).squeeze(-1)


def _step(logits, block, rule: Rule, unmask: bool):
    """One forward's changes to the block. Unmask (M2T): every masked position whose confidence >=
    threshold takes its prediction; if fewer than min_accept pass, the min_accept most confident do.
    Edit (T2T, with editing on): a decoded token whose prediction differs with confidence >
    edit_threshold takes it. `unmask=False`: a post-block step, edits only. Returns (block, edits)."""
    choice, confidence = _predict(logits, rule)
    still = block == rule.mask_id
    edits = torch.zeros_like(still)
    if rule.editing:
        edits = ~still & (choice != block) & (confidence > rule.edit_threshold)
    if not unmask:
        return torch.where(edits, choice, block), int(edits.sum())
    if rule.left_to_right:
        accept = torch.zeros_like(still)
        accept[int(still.nonzero()[0])] = True
        return torch.where(accept | edits, choice, block), int(edits.sum())
    confidence = torch.where(still, confidence, torch.full_like(confidence, -1.0))
    accept = still & (confidence >= rule.threshold)
    if int(accept.sum()) < rule.min_accept:
        k = min(rule.min_accept, int(still.sum()))
        accept = torch.zeros_like(still)
        accept[confidence.topk(k).indices] = True
    return torch.where(accept | edits, choice, block), int(edits.sum())


def _check(start: int, max_new_tokens: int, max_len: int, block_size: int, rule: Rule) -> int:
    """The end of the last whole block the decode may write; bad settings fail here."""
    if not start:
        raise ValueError("empty prompt")
    if max_new_tokens < 1 or rule.min_accept < 1 or not 0.0 <= rule.threshold <= 1.0:
        raise ValueError(f"bad decode settings: max_new_tokens={max_new_tokens}, min_accept={rule.min_accept}, "
                         f"threshold={rule.threshold}")
    end_all = -(-(start + max_new_tokens) // block_size) * block_size  # whole blocks
    if end_all > max_len:
        raise ValueError(
            f"prompt of {start} tokens + {max_new_tokens} new tokens (rounded up to blocks of {block_size}: "
            f"{end_all}) exceeds the model context of {max_len} tokens"
        )
    return end_all


@torch.no_grad()
def generate(model, prompt: list[int], *, mask_id: int, eos_id: int, max_new_tokens: int, max_len: int,
             block_size: int = 32, threshold: float = 0.95, min_accept: int = 1, temperature: float = 0.0,
             stop_ids: tuple[int, ...] = (), generator: torch.Generator | None = None,
             device: str | torch.device = "cpu", use_cache: bool = True, left_to_right: bool = False,
             edit_threshold: float | None = None, edit_steps: int = 16) -> DecodeResult:
    rule = Rule(mask_id, threshold, min_accept, temperature, generator, left_to_right, edit_threshold, edit_steps)
    start = len(prompt)
    end_all = _check(start, max_new_tokens, max_len, block_size, rule)
    seq = torch.full((1, end_all), mask_id, dtype=torch.long, device=device)
    seq[0, :start] = torch.tensor(prompt, device=device)
    cached = use_cache and hasattr(model, "kv_cache")
    with model.kv_cache() if cached else contextlib.nullcontext() as cache:
        return _decode(model, seq, start, max_new_tokens, {eos_id, *stop_ids}, block_size, rule,
                       _cached_logits if cached else _recompute_logits, cache)


def _decode(model, seq, start, max_new_tokens, stops, block_size, rule: Rule, block_logits, cache) -> DecodeResult:
    mask_id = rule.mask_id
    passes, steps_per_block, processed = 0, [], 0
    pos = start
    while pos < start + max_new_tokens:
        block_end = (pos // block_size + 1) * block_size
        steps = 0
        block_start = pos - pos % block_size
        edits_left = rule.post_block_steps
        while True:
            block = seq[0, pos:block_end]
            unmask = _unmasking(block, stops, mask_id)
            if not unmask and not edits_left:
                break  # decoded (or a stop token with everything before it decoded: the rest is never read)
            logits, n = block_logits(model, seq, block_start, block_end, block_size, cache)
            processed, passes, steps = processed + n, passes + 1, steps + 1
            seq[0, pos:block_end], edited = _step(logits[pos - block_start :], block, rule, unmask)
            if not unmask:  # a post-block editing step: the block is final once one changes nothing
                edits_left = edits_left - 1 if edited else 0
        steps_per_block.append(steps)
        block = seq[0, pos:block_end].tolist()
        hit = next((i for i, t in enumerate(block) if t in stops), None)
        if hit is not None:
            return DecodeResult(seq[0, start : pos + hit + 1].tolist(), passes, steps_per_block, processed)
        pos = block_end
    return DecodeResult(seq[0, start : start + max_new_tokens].tolist(), passes, steps_per_block, processed)


@dataclass
class _Row:
    start: int
    pos: int  # the first position of the block being decoded (or of the answer)
    passes: int = 0
    steps: int = 0
    steps_per_block: list[int] = field(default_factory=list)
    processed: int = 0
    result: DecodeResult | None = None
    edits_left: int = 0  # post-block editing steps the current block may still take


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], *, mask_id: int, eos_id: int, max_new_tokens: int, max_len: int,
                   block_size: int = 32, threshold: float = 0.95, min_accept: int = 1, stop_ids: tuple[int, ...] = (),
                   device: str | torch.device = "cpu", left_to_right: bool = False, edit_threshold: float | None = None,
                   edit_steps: int = 16) -> list[DecodeResult]:
    """`generate` for many prompts, one forward per step for all unfinished ones (greedy only, so each
    prompt gets the tokens it gets alone). Each forward runs every prompt's prefix and current block
    (the recompute layout) right-padded to the longest; a prompt's positions after its current block
    are another document, so no prompt sees anything it would not see alone. A prompt that finishes
    leaves the batch; its forward count is the steps it took part in."""
    rule = Rule(mask_id, threshold, min_accept, left_to_right=left_to_right, edit_threshold=edit_threshold,
                edit_steps=edit_steps)
    ends = [_check(len(p), max_new_tokens, max_len, block_size, rule) for p in prompts]
    seq = torch.full((len(prompts), max(ends, default=0)), mask_id, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        seq[r, : len(p)] = torch.tensor(p, device=device)
    stops, rows = {eos_id, *stop_ids}, [_Row(len(p), len(p), edits_left=rule.post_block_steps) for p in prompts]
    where = torch.arange(seq.shape[1], device=device)
    while active := [r for r, row in enumerate(rows) if row.result is None]:
        block_ends = [(rows[r].pos // block_size + 1) * block_size for r in active]
        T = max(block_ends)
        doc = torch.where(where[None, :T] < torch.tensor(block_ends, device=device)[:, None], 0, -1)
        allowed = masks.block_causal_mask(doc, block_size)
        logits = model(seq[active, :T], where[None, :T].expand(len(active), T), allowed)
        for i, (r, end) in enumerate(zip(active, block_ends, strict=True)):
            row = rows[r]
            unmask = _unmasking(seq[r, row.pos : end], stops, mask_id)
            seq[r, row.pos : end], edited = _step(logits[i, row.pos : end], seq[r, row.pos : end], rule, unmask)
            row.passes, row.steps, row.processed = row.passes + 1, row.steps + 1, row.processed + T
            if not unmask:  # a post-block editing step (as in `_decode`)
                row.edits_left = row.edits_left - 1 if edited else 0
            if _unmasking(seq[r, row.pos : end], stops, mask_id) or row.edits_left:
                continue
            block = seq[r, row.pos : end].tolist()
            row.steps_per_block.append(row.steps)
            row.steps = 0
            hit = next((j for j, t in enumerate(block) if t in stops), None)
            if hit is not None or end >= row.start + max_new_tokens:
                stop = row.pos + hit + 1 if hit is not None else row.start + max_new_tokens
                row.result = DecodeResult(seq[r, row.start : stop].tolist(), row.passes, row.steps_per_block,
                                          row.processed)
            row.pos, row.edits_left = end, rule.post_block_steps
    return [row.result for row in rows]


def _unmasking(block, stops: set[int], mask_id: int) -> bool:
    """The block still has [MASK] to fill that will be read (none before the first stop token)."""
    return bool((block == mask_id).any()) and not _finished(block.tolist(), stops, mask_id)


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
