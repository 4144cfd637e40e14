import pytest
import torch
from tiny_attention_model import TinyAttentionLM

from llada_core.sampler import generate, generate_batch

MASK, EOS, V = 3, 1, 16


class Oracle(torch.nn.Module):
    """Knows the target sequence: at each [MASK] position it predicts target[i] with a confidence that
    decays with the distance to the last clean token (as a real denoiser is surest next to context)."""

    def __init__(self, target, sharp=8.0):
        super().__init__()
        self.target, self.sharp, self.calls = target, sharp, []

    def forward(self, ids, pos, allowed):
        self.calls.append((ids.clone(), allowed.clone()))
        B, S = ids.shape
        logits = torch.zeros(B, S, V)
        clean = (ids[0] != MASK).nonzero().max().item()
        for i in range(S):
            if ids[0, i] == MASK:
                logits[0, i, self.target[i]] = self.sharp / (i - clean)
        return logits


def test_threshold_one_decodes_one_token_per_forward():
    target = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 5]
    model = Oracle(target)
    out = generate(model, target[:2], mask_id=MASK, eos_id=EOS, max_new_tokens=8, max_len=16, block_size=4,
                   threshold=1.0)
    assert out.tokens == target[2:10]
    assert out.forward_passes == len(out.tokens) + 2 == 10  # 2 extra steps: the last block's 2 tokens past 8
    assert out.steps_per_block == [2, 4, 4]


def test_low_threshold_accepts_whole_blocks_and_stops_at_eos():
    target = [5, 6, 7, 8, 9, EOS, 11, 12] + [5] * 8
    model = Oracle(target, sharp=50.0)
    out = generate(model, target[:2], mask_id=MASK, eos_id=EOS, max_new_tokens=12, max_len=16, block_size=4,
                   threshold=0.5)
    assert out.tokens == [7, 8, 9, EOS] and out.forward_passes == 2 and out.tpf == 2.0
    assert out.steps_per_block == [1, 1]


def test_layout_is_block_causal_over_absolute_blocks():
    target = list(range(4, 16))
    model = Oracle(target)
    generate(model, target[:3], mask_id=MASK, eos_id=EOS, max_new_tokens=5, max_len=12, block_size=4, threshold=1.0)
    ids, allowed = model.calls[-1]
    assert ids.shape == (1, 8)  # decoding block 1 (positions 4..7): the input stops at its end
    expected = torch.tensor([[j // 4 <= i // 4 for j in range(8)] for i in range(8)])
    assert torch.equal(allowed[0], expected)


def test_real_model_is_deterministic_and_min_accept():
    lm = TinyAttentionLM(vocab=V, seed=0).eval()
    kw = dict(mask_id=MASK, eos_id=EOS, max_new_tokens=8, max_len=32, block_size=4, threshold=0.95)
    a, b = generate(lm, [5, 6, 7], **kw), generate(lm, [5, 6, 7], **kw)
    assert a == b and MASK not in a.tokens
    fast = generate(lm, [5, 6, 7], **{**kw, "min_accept": 4, "threshold": 1.0})
    assert fast.forward_passes <= 3  # 4 per step: blocks of 1 + 4 + 3 positions (last block truncated)


def test_prompt_longer_than_context_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the model context of 16 tokens"):
        generate(Oracle([5] * 64), [5] * 14, mask_id=MASK, eos_id=EOS, max_new_tokens=4, max_len=16, block_size=4)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(Oracle([5]), [], mask_id=MASK, eos_id=EOS, max_new_tokens=4, max_len=16)


def test_left_to_right_fills_one_token_per_forward_in_order():
    target = [5, 6, 7, 8, 9, EOS, 11, 12] + [5] * 8
    model = Oracle(target, sharp=50.0)  # confident everywhere: the parallel rule would take whole blocks
    out = generate(model, target[:2], mask_id=MASK, eos_id=EOS, max_new_tokens=12, max_len=16, block_size=4,
                   threshold=0.5, left_to_right=True)
    assert out.tokens == [7, 8, 9, EOS] and out.forward_passes == 4 and out.steps_per_block == [2, 2]
    filled = [int((ids[0] != MASK).sum()) for ids, _ in model.calls]
    assert filled == [2, 3, 4, 5]  # each forward sees exactly one more decoded token


@pytest.mark.parametrize("settings", [{"threshold": 0.95}, {"threshold": 0.12}, {"threshold": 1.0, "min_accept": 2},
                                      {"threshold": 0.5, "left_to_right": True}])
def test_batched_decoding_gives_the_tokens_of_one_prompt_at_a_time(settings):
    lm = TinyAttentionLM(vocab=V, seed=3).eval()
    prompts = [[5, 6, 7], [9], [4, 4, 8, 9, 10, 11], [12, 5, 6, 7, 8], [7, 7]]  # different blocks, lengths
    kw = dict(mask_id=MASK, eos_id=EOS, stop_ids=(0,), max_new_tokens=9, max_len=32, block_size=4) | settings
    alone = [generate(lm, p, **kw) for p in prompts]
    together = generate_batch(lm, prompts, **kw)
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.forward_passes for r in together] == [r.forward_passes for r in alone]
    assert [r.steps_per_block for r in together] == [r.steps_per_block for r in alone]
    assert len({len(r.tokens) for r in alone}) > 1 or settings.get("threshold") == 1.0  # some stop early
