"""Token editing (LLaDA2.1): the T2T stream in the objectives, hand-computed and against the
mask-only objective, and the editing decoder against a stand-in model whose predictions are a table."""

import math

import pytest
import torch

from llada_core.objectives.base import StepContext
from llada_core.objectives.block_diffusion import CPT, CPTConfig, block_diffusion_from_logits
from llada_core.objectives.cap import CAP, CAPConfig
from llada_core.objectives.common import Noise, apply_noise
from llada_core.objectives.editing import EditConfig, add_random_tokens
from llada_core.objectives.sft import SFT, SFTConfig

MASK, PAD, EOS, V = 3, 2, 1, 50


def ctx(n=64):
    return StepContext(MASK, PAD, EOS, seed=0, step=0, positions=list(range(n)), vocab_size=V)


def test_cpt_loss_with_both_streams_hand_computed():
    # one row of 4 real tokens + 1 pad; position 0 masked (t = 0.5), position 2 holds a random token
    x0 = torch.tensor([[5, 6, 7, 8, PAD]])
    doc = torch.tensor([[0, 0, 0, 0, -1]])
    masked = torch.tensor([[True, False, False, False, False]])
    replaced = torch.tensor([[False, False, True, False, False]])
    visible = (doc >= 0) & ~masked
    noise = Noise(torch.tensor([0.5]), masked, replaced, torch.full_like(x0, 9), visible, edit_weight=0.5)
    assert apply_noise(x0, noise, MASK).tolist() == [[MASK, 6, 9, 8, PAD]]
    logits = torch.randn(1, 5, V, generator=torch.Generator().manual_seed(0))
    nll = [-torch.log_softmax(logits[0, i], -1)[x0[0, i]].item() for i in range(4)]
    want = (nll[0] / 0.5 + 0.5 * (nll[1] + nll[2] + nll[3])) / 4  # over the 4 real tokens
    out = block_diffusion_from_logits(logits, x0, doc, 5, noise)
    assert math.isclose(out.loss.item(), want, rel_tol=1e-6) and out.metrics["edit_tokens"] == 1
    restore_only = Noise(noise.t, masked, replaced, noise.random_ids, replaced, edit_weight=0.5)
    want = (nll[0] / 0.5 + 0.5 * nll[2]) / 4
    assert math.isclose(block_diffusion_from_logits(logits, x0, doc, 5, restore_only).loss.item(), want, rel_tol=1e-6)


def rows(n=64, L=24):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(4, V, (L,), generator=g).tolist(), "doc_ids": [0] * (L - 4) + [-1] * 4}
            for _ in range(n)]


def test_ratio_zero_is_the_mask_only_objective_and_the_masks_never_change():
    r = rows()
    off = CPT(CPTConfig(block_size=8)).batch(r, ctx())
    on = CPT(CPTConfig(block_size=8, edit=EditConfig(ratio=0.3))).batch(r, ctx())
    assert off.noise.replaced is None and off.noise.supervised is None  # nothing of the T2T stream
    assert torch.equal(off.noise.masked, on.noise.masked) and torch.equal(off.noise.t, on.noise.t)
    real = on.doc_ids >= 0
    assert not (on.noise.replaced & (on.noise.masked | ~real)).any()  # only visible real tokens
    frac = on.noise.replaced.sum() / (real & ~on.noise.masked).sum()
    assert 0.25 < frac < 0.35
    xt = apply_noise(on.x0, on.noise, MASK)
    assert (xt[on.noise.replaced] != MASK).all() and (xt[~on.noise.replaced & ~on.noise.masked] ==
                                                       on.x0[~on.noise.replaced & ~on.noise.masked]).all()
    assert torch.equal(on.noise.supervised, real & ~on.noise.masked)
    logits = torch.randn(64, 24, V, generator=torch.Generator().manual_seed(2))
    cpt = CPT(CPTConfig(block_size=8))
    a, b = cpt.loss(logits, off), cpt.loss(logits, on)
    assert b.loss > a.loss  # the visible positions add their (positive) NLL


def test_sft_and_cap_replace_only_visible_response_tokens_of_each_complementary_copy():
    r = [{"input_ids": [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 4, EOS], "prompt_len": 4}] * 64
    for objective in (SFT(SFTConfig(block_size=8, edit=EditConfig(ratio=0.5))),
                      CAP(CAPConfig(block_size=8, edit=EditConfig(ratio=0.5)))):
        b = objective.batch(r, ctx())
        n, resp, noise = 64, b.batch.response, b.noise
        assert torch.equal(noise.masked[:n] | noise.masked[n:], resp[:n])  # still complementary
        assert not (noise.masked[:n] & noise.masked[n:]).any()
        assert not (noise.replaced & ~(resp & ~noise.masked)).any()  # prompt, masked, padding: never
        assert noise.replaced[:, 4:].any() and not noise.replaced[:, :4].any()
        assert noise.replaced[:, 14:16].any()  # the EOS tail is response, so it is edited too
        assert not torch.equal(noise.replaced[:n], noise.replaced[n:])  # each copy has its own draw
        assert (noise.random_ids != MASK).all() and noise.random_ids.max() < V
    plain = SFT(SFTConfig(block_size=8)).batch(r, ctx())
    assert plain.noise.replaced is None and torch.equal(plain.noise.masked, b.noise.masked)


def test_add_random_tokens_with_ratio_zero_returns_the_same_noise():
    noise = Noise(torch.ones(2), torch.zeros(2, 4, dtype=torch.bool))
    assert add_random_tokens(noise, torch.ones(2, 4, dtype=torch.bool), [], EditConfig(), V, MASK) is noise
    with pytest.raises(ValueError):
        EditConfig(ratio=1.0)


class Scripted(torch.nn.Module):
    """A stand-in denoiser: forward k predicts, at position i, script[k][i] = (token, probability);
    every other position predicts its current token with probability 0.99 (so it is never edited)."""

    def __init__(self, script, vocab=8):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, ids, pos, allowed):
        B, S = ids.shape
        logits = torch.zeros(B, S, self.vocab)
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        for i in range(S):
            token, p = step.get(i, (int(ids[0, i]) if ids[0, i] != MASK else 0, 0.99))
            logits[:, i, token] = math.log(p * (self.vocab - 1) / (1 - p))  # softmax gives it p exactly
        return logits


# prompt = positions 0-4 (position 4 shares the block [4, 8) with the answer's 5, 6, 7)
SCRIPT = [
    {4: (7, 0.99), 5: (5, 0.99), 6: (6, 0.5), 7: (7, 0.5)},  # unmask 5
    {4: (7, 0.99), 5: (6, 0.95), 6: (6, 0.99), 7: (4, 0.6)},  # unmask 6; edit 5 (0.95 > 0.9); prompt: never
    {6: (7, 0.85), 7: (EOS, 0.99)},  # unmask 7; 6 differs but 0.85 <= 0.9: kept
    {6: (7, 0.97)},  # post-block step: edit 6
    {},  # post-block step that changes nothing: the block is final
]
PROMPT = [4, 5, 6, 7, 2]


@pytest.mark.parametrize("batched", [False, True])
def test_edits_happen_exactly_where_the_rule_says_and_tpf_counts_every_forward(batched):
    from llada_core.sampler import generate, generate_batch

    def run(**kw):
        model = Scripted(SCRIPT)
        common = dict(mask_id=MASK, eos_id=EOS, max_new_tokens=3, max_len=8, block_size=4, threshold=0.95) | kw
        out = generate_batch(model, [PROMPT], **common)[0] if batched else generate(model, PROMPT, **common)
        return out, model.calls

    plain, calls = run()
    assert (plain.tokens, plain.forward_passes, calls) == ([5, 6, EOS], 3, 3)
    edited, calls = run(edit_threshold=0.9)
    assert (edited.tokens, edited.forward_passes, calls) == ([6, 7, EOS], 5, 5)
    assert edited.steps_per_block == [5] and math.isclose(edited.tpf, 3 / 5)
    one_post_step, _ = run(edit_threshold=0.9, edit_steps=1)
    assert (one_post_step.tokens, one_post_step.forward_passes) == ([6, 7, EOS], 4)
    above_one, calls = run(edit_threshold=1.5)  # no prediction is that confident: today's decoder
    assert (above_one.tokens, above_one.forward_passes, calls) == (plain.tokens, plain.forward_passes, 3)
    strict, _ = run(edit_threshold=0.96)  # 0.95 and 0.97 ... only the 0.97 edit passes
    assert strict.tokens == [5, 7, EOS]


def test_editing_above_one_equals_todays_decoder_on_a_real_model_and_batched_equals_alone():
    from tiny_attention_model import TinyAttentionLM

    from llada_core.sampler import generate, generate_batch

    lm = TinyAttentionLM(vocab=16, seed=3).eval()
    prompts = [[5, 6, 7], [9], [4, 4, 8, 9, 10, 11], [12, 5, 6, 7, 8]]
    kw = dict(mask_id=MASK, eos_id=EOS, stop_ids=(0,), max_new_tokens=9, max_len=32, block_size=4, threshold=0.5)
    today = [generate(lm, p, **kw) for p in prompts]
    assert [generate(lm, p, **kw, edit_threshold=1.01) for p in prompts] == today
    editing = dict(kw, edit_threshold=0.2, edit_steps=3)
    alone = [generate(lm, p, **editing) for p in prompts]
    assert [r.forward_passes for r in alone] != [r.forward_passes for r in today]  # editing did something
    together = generate_batch(lm, prompts, **editing)
    assert [(r.tokens, r.forward_passes, r.steps_per_block) for r in together] == [
        (r.tokens, r.forward_passes, r.steps_per_block) for r in alone]


def test_editing_claims_compare_the_modes_with_the_non_editing_model_of_the_same_budget():
    from llada_recipe.report import editing_claims

    def t(acc, tpf, **kw):
        return {"accuracy": acc, "tpf": tpf, "tokens_per_s": 100.0 * tpf, "threshold": 0.95} | kw

    mine = {"cap": {"tasks": t(0.50, 1.2), "edit_speed": t(0.49, 3.1, threshold=0.5),
                    "edit_quality": t(0.55, 1.9, threshold=0.8)}}
    base = {"cap": {"tasks": t(0.52, 2.0)}}
    speed, quality = editing_claims(mine, base)
    assert "non-editing CAP of the same budget" in speed["claim"]
    assert speed["numbers"] == "TPF 2.00 -> 3.10 (1.55x), accuracy 0.520 -> 0.490"
    assert speed["shown"] is False  # fast enough, but 3 points less accurate
    assert quality["numbers"] == "accuracy 0.520 -> 0.550, TPF 2.00 -> 1.90"
    assert quality["shown"] is False  # more accurate at a lower TPF than the baseline's
    alone = editing_claims(mine, None)  # no baseline run: against its own non-editing decoding, said so
    assert "this CAP without editing" in alone[0]["claim"] and alone[0]["shown"] is True  # 3.1 vs 1.2, 0.49 vs 0.50
    assert alone[1]["shown"] is True  # 0.55 >= 0.50 at 1.9 >= 1.2
    assert editing_claims({"cap": {"tasks": t(0.5, 1.0)}}, base) == []


def test_the_baseline_of_an_editing_run_is_the_latest_finished_run_of_the_same_recipe_without_editing():
    from llada_recipe.demo import baseline_run

    class Store:
        def __init__(self, runs):
            self._runs = runs

        def runs(self):
            return list(self._runs)

        def run(self, r):
            return {"recipe_config": self._runs[r][0]}

        def node(self, r, node):
            return {"state": self._runs[r][1]}

    cfg = {"name": "tiny-cpu", "seed": 0, "token_editing": None}
    store = Store({"a": (cfg, "SUCCEEDED"), "b": (cfg | {"seed": 1}, "SUCCEEDED"), "c": (cfg, "FAILED"),
                   "e": (cfg | {"token_editing": {"ratio": 0.1}}, "SUCCEEDED")})
    assert baseline_run(store, "e") == "a"  # b has another seed; c never finished its eval
    assert baseline_run(store, "a") is None  # a run without editing has no baseline
