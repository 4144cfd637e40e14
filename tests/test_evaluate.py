"""Preference accuracy: each ELBO over a complementary pair of draws, so the symbol two responses
differ in is always scored, whatever the draw."""

import torch

from llada_core.data.shards import DatasetWriter
from llada_core.evaluate import preference_accuracy
from llada_core.objectives.common import row_noise, sample_generator
from llada_core.objectives.dpo import elbo
from llada_core.objectives.sft import ResponseConfig, pad_examples
from stages.prepare_instruct import schema_of

V, PAD, EOS, MASK = 32, 2, 1, 3
GOOD, BAD = 20, 21  # the responses differ in one position: GOOD in chosen, BAD in rejected


class Prefers(torch.nn.Module):
    """Context-free stand-in denoiser: every position's logits favour GOOD over BAD (by `margin`)."""

    def __init__(self, margin: float = 4.0):
        super().__init__()
        self.margin = margin

    def forward(self, input_ids, position_ids, allowed, logits_len=None, mask_noise=None):
        logits = torch.zeros(V)
        logits[GOOD] = self.margin
        return logits.expand(input_ids.shape[0], logits_len or input_ids.shape[1], V)


def _pairs(root, n=24):
    w = DatasetWriter(str(root / "dpo"), schema_of("dpo"), rows_per_shard=8)
    w.open()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        prompt = torch.randint(8, 16, (6,), generator=g).tolist()
        response = torch.randint(8, 16, (10,), generator=g).tolist()
        j = i % 10
        chosen, rejected = list(response), list(response)
        chosen[j], rejected[j] = GOOD, BAD
        w.add("val", chosen_ids=prompt + chosen + [EOS], rejected_ids=prompt + rejected + [EOS], prompt_len=6)
    special = {"pad": {"id": PAD}, "eos": {"id": EOS}, "mask": {"id": MASK}}
    w.commit({"kind": "dpo", "tokenizer": {"digest": "-", "vocab_size": V, "special_tokens": special}})
    return str(root / "dpo")


def test_the_differing_symbol_is_scored_in_every_pair(tmp_path):
    data, pairs = _pairs(tmp_path), ResponseConfig(block_size=8)
    model = Prefers()
    assert preference_accuracy(model, data, pairs, "val", 24) == 1.0
    # one draw alone leaves the differing symbol visible in some pairs: a tie there (what the
    # estimator of the previous stop counted as a loss)
    from llada_core.data.shards import read_split

    ties = 0
    for i, r in enumerate(read_split(data, "val").to_pylist()):
        scores = []
        for key in ("chosen_ids", "rejected_ids"):
            b = pad_examples([(r[key], 6)], 8, PAD, eos_id=EOS)
            noise = row_noise(b.response, [sample_generator(0, i)], pairs.alpha_min, pairs.alpha_max)
            scores.append(elbo(model, b, noise, 8, MASK).item())
        ties += scores[0] == scores[1]
    assert 0 < ties < 24
    # a model with no preference ties everywhere: one half
    assert preference_accuracy(Prefers(margin=0.0), data, pairs, "val", 24) == 0.5
