"""`export-hf --relocate-mask`: [MASK] moved to the id a server fixes (llada_core.model.mask_relocation),
and the server's default decoder (llada_core.server_decode) the export is checked against."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_export_formats import LING, QWEN3, checkpoint
from test_hf_interop import our_logits

from llada_core.checkpoint import save_checkpoint
from llada_core.data.tokenizer import load_tokenizer, train_bpe
from llada_core.model import mask_relocation as relocation
from llada_core.model.config import ModelConfig, pad_vocab
from llada_core.model.hf_config import CheckpointError
from llada_core.model.hf_formats import get_format
from llada_core.model.hf_io import expected_shapes
from llada_core.server_decode import low_confidence_decode
from pipelines.cli import main
from stages.model_hf import export_hf, import_hf

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
         "for i in range(10):\n    print(i * i)\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe(iter(TEXTS), vocab_size=300)


def test_the_relocated_tokenizer_encodes_every_text_as_before_and_mask_at_the_servers_id(tok, tmp_path):
    moved = relocation.tokenizer(tok, relocation.plan(tok, get_format("llada2"), pad_vocab(tok.vocab_size)))
    assert tok.id_of("mask") == 3 and moved.id_of("mask") == 156895 and moved.vocab_size == 156896
    assert {r: i for r, i in moved.ids.items() if r != "mask"} == {r: i for r, i in tok.ids.items() if r != "mask"}
    for text in [*TEXTS[:3], "<|user|>unseen words: zebra 42<|eot|><|assistant|>", "<|reserved_5000|> <|reserved_3|>"]:
        assert moved.encode(text) == tok.encode(text)  # a placeholder is never emitted, even typed out
        assert moved.decode(moved.encode(text)) == tok.decode(tok.encode(text))
    assert moved.encode("a<|mask|>b") == [156895 if i == 3 else i for i in tok.encode("a<|mask|>b")]
    moved.save(tmp_path)
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert hf.convert_tokens_to_ids("<|mask|>") == 156895 and len(hf) == 156896
    assert load_tokenizer(tmp_path).ids == moved.ids


def test_the_relocated_export_scores_real_tokens_as_before_and_every_emptied_id_as_mask(tok, tmp_path):
    from llada_core.parallel.setup import init_single_process

    init_single_process(seed=0)
    cfg = ModelConfig(vocab_size=pad_vocab(tok.vocab_size), qk_norm=True, **LING)
    g = torch.Generator().manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", cfg, ((k, torch.randn(s, generator=g) * 0.3)
                                             for k, s in expected_shapes(cfg).items()), tok, {"source": "test"})
    info = export_hf(tmp_path / "ckpt", tmp_path / "hf", "llada2", relocate_mask=True)
    assert info["relocated_mask"] == {"from": 3, "to": 156895, "rows_scored_like_mask": 156928 - 384 + 1}
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert config["architectures"] == ["LLaDA2MoeModelLM"] and config["vocab_size"] == 156928
    assert config["mask_token_id"] == generation["mask_token_id"] == 156895
    import_hf(tmp_path / "hf", tmp_path / "back")
    ids = torch.tensor([[tok.id_of("bos"), *tok.encode(TEXTS[0])[:10], 3, 3]])
    before = our_logits(tmp_path / "ckpt", ids)[0]
    served = our_logits(tmp_path / "back", torch.where(ids == 3, 156895, ids))[0]
    real = [i for i in range(384) if i != 3]
    assert before[:, real].abs().max() > 1.0
    torch.testing.assert_close(served[:, real], before[:, real], rtol=0, atol=1e-5)
    emptied = torch.cat([served[:, 3:4], served[:, 384:]], 1)
    torch.testing.assert_close(emptied, before[:, 3:4].expand_as(emptied), rtol=0, atol=1e-5)
    # an export of the re-imported model needs no move and writes the same tensors
    export_hf(tmp_path / "back", tmp_path / "again", "llada2")
    first, second = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf", "again"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_what_cannot_be_relocated_is_one_error_and_nothing_written(tmp_path, capsys):
    checkpoint(tmp_path / "dense", QWEN3, "llada2")  # a LLaDA2-sized vocabulary: id 151669 is a real token
    with pytest.raises(CheckpointError, match=r"needs id 151669 \(sdar's \[MASK\]\) free, .* id 151669 is 't151669'"):
        export_hf(tmp_path / "dense", tmp_path / "out", "sdar", relocate_mask=True)
    assert not (tmp_path / "out").exists()
    assert main(["model", "export-hf", str(tmp_path / "dense"), "--out", str(tmp_path / "out"), "--format", "qwen",
                 "--relocate-mask"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --relocate-mask: --format qwen is an AR layout, with no fixed [MASK] id"]
    assert not (tmp_path / "out").exists()


class FixedDenoiser:
    """Predicts from a fixed table per position, whatever the input (vocab 6, [MASK] = 5, stop = 4)."""

    def __init__(self, table: dict[int, tuple[int, float]]):
        self.probs = torch.full((8, 6), 1e-3)
        for pos, (token, p) in table.items():
            self.probs[pos] = (1 - p) / 5
            self.probs[pos, token] = p

    def __call__(self, ids, positions, allowed):
        return self.probs[: ids.shape[1]].log()[None]


def test_the_server_decoder_fills_above_threshold_else_the_most_confident_and_may_predict_mask():
    # prompt = positions 0-1; block 4: positions 2-3, then 4-7; position 7's best guess is [MASK] itself
    model = FixedDenoiser({2: (2, 0.97), 3: (3, 0.6), 4: (1, 0.99), 5: (4, 0.7), 6: (0, 0.8), 7: (5, 0.5)})
    out = low_confidence_decode(model, [0, 1], mask_id=5, stop_ids={4}, max_new_tokens=6, block_size=4)
    # forwards fill {2}, {3} (fallback), {4}, {6} (fallback), {5}, then {7} gets [MASK]: the block's 4 are spent
    assert out.tokens == [2, 3, 1, 4]
    assert out.forward_passes == 2 + 4
    assert out.confidences == pytest.approx([0.97, 0.6, 0.99, 0.8, 0.7, 0.5])
