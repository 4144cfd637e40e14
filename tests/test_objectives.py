"""Objectives: hand-computed small cases (fixed-logit model) and invariances (tiny SDPA model)."""

import math

import pytest
import torch
from tiny_attention_model import TinyAttentionLM

from llada_core.model.build import add_mask_embedding_noise
from llada_core.objectives.ar import ar_loss
from llada_core.objectives.block_diffusion import block_diffusion_loss, denoise_logits, mdlm_loss
from llada_core.objectives.cap import cap_loss, confidence_entropy
from llada_core.objectives.common import Noise, draw_noise
from llada_core.objectives.dpo import dpo_loss, elbo
from llada_core.objectives.sft import complementary, pad_examples, sft_loss

MASK, PAD, EOS, V = 3, 2, 1, 8


class FixedLogits(torch.nn.Module):
    """Logits that ignore the input: row i of `table` at position i (of the x_t half)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.calls = []

    def forward(self, input_ids, position_ids, allowed, logits_len=None):
        self.calls.append((input_ids.clone(), allowed.clone()))
        B, S = input_ids.shape
        L = self.table.shape[0]
        idx = position_ids[:, :logits_len].clamp(max=L - 1)
        return self.table[idx]


def test_block_diffusion_hand_computed():
    # L=4, uniform logits -> -log p = log V everywhere. Row: 3 real tokens + 1 pad.
    model = FixedLogits(torch.zeros(4, V))
    x0 = torch.tensor([[5, 6, 7, PAD]])
    doc = torch.tensor([[0, 0, 0, -1]])
    noise = Noise(t=torch.tensor([0.5]), masked=torch.tensor([[True, False, True, False]]))
    out = block_diffusion_loss(model, x0, doc, block_size=2, mask_id=MASK, noise=noise)
    # Eq. 1: (2 masked * log V) / t, normalised by 3 non-pad tokens
    assert out.loss.item() == pytest.approx(2 * math.log(V) / 0.5 / 3, rel=1e-6)
    ids, allowed = model.calls[-1]
    assert ids.tolist() == [[MASK, 6, MASK, PAD, 5, 6, 7, PAD]] and allowed.shape == (1, 8, 8)


def test_loss_uses_unshifted_labels_and_only_masked_positions():
    table = torch.full((3, V), -10.0)
    table[0, 4] = table[1, 5] = table[2, 6] = 10.0  # position i confidently predicts 4 + i
    model = FixedLogits(table)
    x0 = torch.tensor([[4, 5, 1]])  # positions 0, 1 right; position 2 wrong
    doc = torch.zeros_like(x0)
    right = block_diffusion_loss(model, x0, doc, 3, MASK,
                                 noise=Noise(torch.tensor([1.0]), torch.tensor([[True, True, False]])))
    wrong = block_diffusion_loss(model, x0, doc, 3, MASK,
                                 noise=Noise(torch.tensor([1.0]), torch.tensor([[False, False, True]])))
    assert right.loss.item() < 1e-6 and wrong.loss.item() > 5.0
    assert model.calls[-1][0].shape == (1, 3)  # L_B = L: the input is x_t alone (Eq. 2)


def test_draw_noise_never_masks_ineligible_and_t_range():
    g = torch.Generator().manual_seed(0)
    eligible = torch.rand(64, 32, generator=g) < 0.7
    noise = draw_noise(eligible, g)
    assert not (noise.masked & ~eligible).any()
    assert (noise.t >= 1e-3).all() and (noise.t <= 1).all()
    ratio = noise.masked.sum(1) / eligible.sum(1)
    assert torch.corrcoef(torch.stack([ratio, noise.t]))[0, 1] > 0.9  # masking follows t


def test_ar_loss_hand_computed():
    table = torch.zeros(4, V)
    table[0, 5] = 100.0  # position 0 predicts token 5 (correct next token)
    model = FixedLogits(table)
    x0 = torch.tensor([[4, 5, 6, 7]])
    doc = torch.tensor([[0, 0, 1, 1]])  # 5 -> 6 crosses documents: not a target
    out = ar_loss(model, x0, doc)
    # targets: pos0->5 (nll 0), pos2->7 (nll log V); pos1->6 excluded (boundary)
    assert out.loss.item() == pytest.approx(math.log(V) / 2, rel=1e-5) and out.metrics["tokens"] == 2


def test_sft_padding_prompt_and_complementary_masks():
    batch = pad_examples([([1, 5, 6, 7, 4], 2), ([1, 5, 4], 1)], block_size=4, pad_id=PAD)
    assert batch.input_ids.shape == (2, 8)
    assert batch.input_ids[1].tolist() == [1, 5, 4] + [PAD] * 5
    assert batch.response.tolist() == [[False, False, True, True, True, False, False, False],
                                       [False, True, True, False, False, False, False, False]]
    g = torch.Generator().manual_seed(1)
    noise = draw_noise(batch.response, g, 0.3, 0.8)
    doubled, both = complementary(batch, noise)
    first, second = both.masked.chunk(2)
    assert torch.equal(first ^ second, batch.response)  # every response token exactly once
    assert not (first & second).any() and not (both.masked & ~doubled.response).any()
    assert torch.allclose(both.t, torch.cat([noise.t, 1 - noise.t]))
    assert ((noise.t >= 0.3) & (noise.t <= 0.8)).all()


def test_sft_tail_of_the_last_block_eos_supervised_or_mask_context():
    examples = [([1, 5, 6, 7, 4], 2), ([1, 5, 4], 1)]
    # row 0 ends in block 1 at position 4: its tail is 5..7; row 1 ends in block 0: tail 3, then batch padding
    eos = pad_examples(examples, block_size=4, pad_id=PAD, eos_id=EOS)
    assert eos.input_ids.tolist() == [[1, 5, 6, 7, 4, EOS, EOS, EOS], [1, 5, 4, EOS, PAD, PAD, PAD, PAD]]
    assert eos.doc_ids.tolist() == [[0] * 8, [0, 0, 0, 0, -1, -1, -1, -1]]
    assert eos.response.tolist() == [[False, False, True, True, True, True, True, True],
                                     [False, True, True, True, False, False, False, False]]  # tail = response
    ctx = pad_examples(examples, block_size=4, pad_id=PAD, mask_id=MASK)
    assert ctx.input_ids.tolist() == [[1, 5, 6, 7, 4, MASK, MASK, MASK], [1, 5, 4, MASK, PAD, PAD, PAD, PAD]]
    assert ctx.doc_ids.tolist() == eos.doc_ids.tolist()
    assert ctx.response.sum(1).tolist() == [3, 2]  # [MASK] context: never noised, never in the loss
    plain = pad_examples([([1, 5, 4], 1)], block_size=4, pad_id=PAD)
    assert plain.input_ids.tolist() == [[1, 5, 4, PAD]] and plain.doc_ids.tolist() == [[0, 0, 0, -1]]
    with pytest.raises(ValueError, match="not both"):
        pad_examples(examples, 4, PAD, eos_id=EOS, mask_id=MASK)


def test_sft_loss_with_eos_tail_hand_computed_batch_padding_never_counts():
    table = torch.zeros(8, V)
    table[:, EOS] = math.log(3.0)  # p(EOS) = 3 / (V + 2) at every position, p(other) = 1 / (V + 2)
    model = FixedLogits(table)
    batch = pad_examples([([1, 5, 6, 7, 4], 2), ([1, 5, 4], 1)], block_size=4, pad_id=PAD, eos_id=EOS)
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[0, [2, 6]] = True  # a response token and a tail EOS of row 0
    masked[1, [3]] = True  # row 1's tail EOS
    noise = Noise(torch.tensor([0.5, 0.25]), masked)
    out = sft_loss(model, batch, 4, MASK, noise=noise, complementary_masking=False)
    z = V + 2
    nll_eos, nll_other = -math.log(3 / z), -math.log(1 / z)
    # row 0: (token 6 + tail EOS) / 0.5; row 1: tail EOS / 0.25; over 6 + 3 response-or-tail tokens
    expected = ((nll_other + nll_eos) / 0.5 + nll_eos / 0.25) / 9
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics == {"response_tokens": 9, "masked_tokens": 3}
    ids = model.calls[-1][0]
    assert ids[1, 4:8].tolist() == [PAD] * 4 and ids[0, 6] == MASK and ids[1, 3] == MASK  # padding stays
    # complementary masks cover every response + tail token exactly once
    doubled, both = complementary(batch, draw_noise(batch.response, torch.Generator().manual_seed(2), 0.3, 0.8))
    first, second = both.masked.chunk(2)
    assert torch.equal(first ^ second, batch.response) and not (first & second).any()
    assert not (both.masked & (doubled.doc_ids < 0)).any()


def test_sft_loss_hand_computed_and_pads_never_count():
    model = FixedLogits(torch.zeros(4, V))
    batch = pad_examples([([1, 5, 6], 1)], block_size=4, pad_id=PAD)  # 2 response tokens + 1 pad
    noise = Noise(torch.tensor([0.25]), torch.tensor([[False, True, False, False]]))
    out = sft_loss(model, batch, 4, MASK, noise=noise)
    # copy 1: 1 masked / 0.25; copy 2 (inverse): 1 masked / 0.75; over 4 response tokens
    expected = (math.log(V) / 0.25 + math.log(V) / 0.75) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics == {"response_tokens": 4, "masked_tokens": 2}
    ids = model.calls[-1][0]
    assert ids[0, 3] == PAD and ids[1, 3] == PAD and (ids[:, 0] == 1).all()  # pads and prompt stay


def test_cap_entropy_only_on_correct_masked_positions():
    logits = torch.tensor([[[4.0, 0, 0], [0, 0, 0], [0, 4.0, 0]]])
    x0 = torch.tensor([[0, 0, 2]])  # pos0 correct (argmax 0), pos1 tie -> argmax 0 == 0 correct, pos2 wrong
    masked = torch.tensor([[True, False, True]])
    value, n = confidence_entropy(logits, x0, masked)
    p = torch.softmax(torch.tensor([4.0, 0, 0]), 0)
    assert n == 1 and value.item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    model = FixedLogits(torch.zeros(4, V))
    batch = pad_examples([([1, 5, 6, 7], 1)], 4, PAD)
    noise = Noise(torch.tensor([0.5]), torch.tensor([[False, True, False, True]]))
    sft = sft_loss(model, batch, 4, MASK, noise=noise)
    cap = cap_loss(model, batch, 4, MASK, lam=2.0, noise=noise)
    # uniform logits: argmax = token 0, never the target here -> L_conf = 0
    assert cap.loss.item() == pytest.approx(sft.loss.item()) and cap.metrics["conf_tokens"] == 0


def test_dpo_hand_computed_and_shared_noise():
    policy, reference = FixedLogits(torch.zeros(4, V)), FixedLogits(torch.zeros(4, V))
    with torch.no_grad():
        policy.table[1, 5] = 2.0  # the policy likes token 5 at position 1
    chosen = pad_examples([([1, 5], 1)], 2, PAD)
    rejected = pad_examples([([1, 6], 1)], 2, PAD)
    mask = torch.tensor([[False, True]])
    noise = (Noise(torch.tensor([0.5]), mask), Noise(torch.tensor([0.5]), mask))
    out = dpo_loss(policy, reference, chosen, rejected, 2, MASK, beta=0.1, noise=noise)
    lp = torch.log_softmax(policy.table[1].detach(), 0)
    margin = ((lp[5] + math.log(V)) - (lp[6] + math.log(V))) / 0.5
    assert out.loss.item() == pytest.approx(float(-torch.nn.functional.logsigmoid(0.1 * margin)), rel=1e-5)
    assert out.metrics["accuracy"] == 1.0
    out.loss.backward()
    assert policy.table.grad is not None and reference.table.grad is None  # reference is frozen
    assert elbo(policy, chosen, noise[0], 2, MASK).shape == (1,)


def test_mask_embedding_noise_only_at_mask_positions():
    emb = torch.zeros(1, 4, 8)
    ids = torch.tensor([[MASK, 5, MASK, 6]])
    out = add_mask_embedding_noise(emb, ids, MASK, 0.1, [torch.Generator().manual_seed(0)])
    assert (out[0, [1, 3]] == 0).all() and (out[0, [0, 2]] != 0).all()
    assert 0.03 < out[0, [0, 2]].std() < 0.3
    assert add_mask_embedding_noise(emb, ids, MASK, 0.0) is emb
    # a sequence-parallel rank's slice (positions 2..3) gets exactly those positions of the whole noise
    part = add_mask_embedding_noise(emb[:, 2:], ids, MASK, 0.1, [torch.Generator().manual_seed(0)], first=2)
    assert torch.equal(part, out[:, 2:])
    # rows draw from their own generators: a row's noise does not depend on the rest of the batch
    two = add_mask_embedding_noise(emb.repeat(2, 1, 1), ids.repeat(2, 1), MASK, 0.1,
                                   [torch.Generator().manual_seed(5), torch.Generator().manual_seed(0)])
    assert torch.equal(two[1:], out)


# ---- invariances with a real (tiny) attention model -------------------------------------------

@pytest.fixture
def lm():
    return TinyAttentionLM(vocab=V + 8, seed=0).eval()


def test_full_block_equals_x_t_alone(lm):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, V, (2, 8), generator=g)
    doc = torch.tensor([[0] * 5 + [1] * 3, [0] * 8])
    noise = draw_noise(doc >= 0, g)
    from llada_core import masks
    from llada_core.objectives.common import apply_noise, positions

    xt = apply_noise(x0, noise, MASK)
    pos = positions(2, 8, x0.device)
    two_l = lm(torch.cat([xt, x0], 1), torch.cat([pos, pos], 1), masks.block_diffusion_mask(doc, 8))[:, :8]
    alone = lm(xt, pos, masks.document_mask(doc))
    assert torch.allclose(two_l, alone, atol=1e-5)


def test_block_k_sees_only_earlier_clean_blocks_and_own_noisy_block(lm):
    g = torch.Generator().manual_seed(1)
    L, blk, k = 12, 4, 1  # look at block 1 (positions 4..7)
    x0 = torch.randint(4, V, (1, L), generator=g)
    doc = torch.zeros(1, L, dtype=torch.long)
    xt = x0.clone()
    xt[0, 5] = MASK
    sl = slice(k * blk, (k + 1) * blk)

    def logits(xt_, x0_):
        return denoise_logits(lm, xt_, x0_, doc, blk)[0, sl]

    base = logits(xt, x0)
    x0_later = x0.clone()
    x0_later[0, 4:] = (x0_later[0, 4:] + 1) % V  # x_0 at blocks >= k
    xt_other = xt.clone()
    xt_other[0, 8:] = MASK  # x_t in another block
    x0_earlier = x0.clone()
    x0_earlier[0, 1] = (x0_earlier[0, 1] + 1) % V  # x_0 of an earlier block
    assert torch.allclose(base, logits(xt, x0_later), atol=1e-6)
    assert torch.allclose(base, logits(xt_other, x0), atol=1e-6)
    assert not torch.allclose(base, logits(xt, x0_earlier), atol=1e-4)


def test_documents_are_isolated(lm):
    x0 = torch.tensor([[4, 5, 6, 7, 4, 5, 6, 7]])
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    other = x0.clone()
    other[0, 5:] = torch.tensor([7, 7, 4])  # change document 1 only
    for block in (1, 2, 4, 8):
        a = denoise_logits(lm, x0, x0, doc, block)[0, :3]
        b = denoise_logits(lm, other, other, doc, block)[0, :3]
        assert torch.allclose(a, b, atol=1e-6), block


def test_mdlm_is_block_diffusion_with_one_block(lm):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(4, V, (2, 8), generator=g)
    doc = torch.zeros_like(x0)
    noise = draw_noise(doc >= 0, g)
    a = mdlm_loss(lm, x0, doc, MASK, noise=noise).loss
    b = block_diffusion_loss(lm, x0, doc, 8, MASK, noise=noise).loss
    assert torch.equal(a, b)


def test_block_size_one_elbo_is_unbiased_for_the_ar_factorised_nll(lm):
    """With L_B = 1 a masked token i sees exactly x_0[<i] (and itself as [MASK]), whatever else is
    masked, so E_t,mask[ 1[masked_i] / t * nll_i ] = nll_i: the ELBO is the AR-factorised NLL."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(4, V, (1, 8), generator=g)
    doc = torch.zeros_like(x0)
    every = block_diffusion_loss(lm, x0, doc, 1, MASK, noise=Noise(torch.ones(1), torch.ones(1, 8, dtype=torch.bool)))
    n = 4000
    with torch.no_grad():
        draws = block_diffusion_loss(lm, x0.repeat(n, 1), doc.repeat(n, 1), 1, MASK, generator=g)
    # the batch loss is the mean over draws of per-draw losses; its MC error is ~1-2% here
    assert draws.loss.item() == pytest.approx(every.loss.item(), rel=0.05)


def test_to_device_moves_every_tensor_of_a_batch_and_keeps_the_rest():
    """Objectives build batches on the CPU; the trainer moves them to the model's device (a GPU there)."""
    from llada_core.objectives.block_diffusion import NoisedBatch
    from llada_core.objectives.common import to_device

    g = torch.Generator().manual_seed(0)
    batch = NoisedBatch(torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long),
                        Noise(torch.rand(2), torch.zeros(2, 4, dtype=torch.bool)), 4, 3, (3, 0.1, [g, g]))
    moved = to_device(batch, torch.device("meta"))
    assert [t.device.type for t in (moved.x0, moved.doc_ids, moved.noise.t, moved.noise.masked)] == ["meta"] * 4
    assert moved.block_size == 4 and moved.mask_id == 3 and moved.mask_noise[2][0] is g
    assert batch.x0.device.type == "cpu"  # the original is untouched


def test_dpo_batch_draws_t_from_the_sft_band_with_the_eos_tail():
    from llada_core.objectives.base import StepContext
    from llada_core.objectives.dpo import DPO, DPOConfig

    rows = [{"chosen_ids": [1, 5, 6, 7, 4], "rejected_ids": [1, 5, 7, 6, 4], "prompt_len": 2}] * 64
    ctx = StepContext(MASK, PAD, EOS, seed=0, step=0, positions=list(range(64)))
    b = DPO(DPOConfig(block_size=4)).batch(rows, ctx)
    for noise in b.noise:
        assert ((noise.t >= 0.3) & (noise.t <= 0.8)).all() and noise.t.max() - noise.t.min() > 0.3
    assert b.chosen.input_ids[0].tolist() == [1, 5, 6, 7, 4, EOS, EOS, EOS] and b.chosen.response[0, 5:].all()
    off = DPO(DPOConfig(block_size=4, eos_tail=False, alpha_min=1e-3, alpha_max=1.0)).batch(rows, ctx)
    assert off.chosen.input_ids[0, 5:].tolist() == [MASK] * 3 and not off.chosen.response[0, 5:].any()
    assert off.noise[0].t.min() < 0.3
