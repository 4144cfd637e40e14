import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from llada_core.data.chat import ChatFormatError, encode_example
from llada_core.data.tokenizer import DEFAULT_SPECIAL, TokenizerError, load_tokenizer, train_bpe

TEXT = ["hello world, block diffusion", "def f(x):\n    return x * 2\n", "naïve café 東京"] * 20


def test_trained_tokenizer_has_every_role_and_roundtrips(tmp_path):
    tok = train_bpe(iter(TEXT), vocab_size=320)
    assert set(tok.special) == set(DEFAULT_SPECIAL)
    assert sorted(tok.ids.values()) == list(range(len(DEFAULT_SPECIAL)))
    for text in TEXT[:3]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert not set(ids) & set(tok.ids.values())  # text never encodes to a special token
    digest = tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.digest == digest == (tmp_path / "digest.txt").read_text().strip()
    assert again.ids == tok.ids and again.added_roles == []


def test_training_is_deterministic():
    assert train_bpe(iter(TEXT), 320).digest == train_bpe(iter(TEXT), 320).digest


def _foreign_tokenizer(tmp_path, with_mask: bool):
    """An HF-style tokenizer dir that knows nothing of our roles (like a base model's)."""
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "</s>": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"] + (["<mask>"] if with_mask else []))
    tok.save(str(tmp_path / "tokenizer.json"))
    conf = {"eos_token": "</s>"} | ({"mask_token": {"content": "<mask>"}} if with_mask else {})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(conf))
    return tmp_path


def test_loaded_tokenizer_without_mask_is_an_error_unless_told(tmp_path):
    d = _foreign_tokenizer(tmp_path, with_mask=False)
    with pytest.raises(TokenizerError, match="no mask token.*--add-mask-token"):
        load_tokenizer(d)
    tok = load_tokenizer(d, add_mask_token="<|mask|>")
    assert tok.special["mask"] == "<|mask|>" and tok.id_of("mask") >= 4
    assert tok.special["eos"] == "</s>" and tok.id_of("eos") == 2
    assert "mask" in tok.added_roles and "eos" not in tok.added_roles


def test_loaded_tokenizer_uses_its_own_mask(tmp_path):
    tok = load_tokenizer(_foreign_tokenizer(tmp_path, with_mask=True))
    assert tok.special["mask"] == "<mask>" and "mask" not in tok.added_roles


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot parse"):
        load_tokenizer(tmp_path)


def test_chat_template_prompt_length(tmp_path):
    tok = train_bpe(iter(TEXT + ["Add: 12+30= 42"] * 10), 320)
    ids, prompt_len = encode_example(tok, [{"role": "user", "content": "Add: 12+30="},
                                           {"role": "assistant", "content": "42"}])
    assert ids[0] == tok.id_of("bos") and ids[prompt_len - 1] == tok.id_of("assistant")
    assert tok.decode(ids[prompt_len:-2]) == "42"
    assert ids[-2:] == [tok.id_of("eot"), tok.id_of("eos")]
    with pytest.raises(ChatFormatError, match="last message must be the assistant"):
        encode_example(tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(ChatFormatError, match="role must be one of"):
        encode_example(tok, [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}])


def test_single_tokens_are_whole_and_the_vocabulary_keeps_its_size():
    # " 9" is rare in this text: the trainer alone leaves it as " " + "9"
    text = ["x = 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 " * 3, "def f(a, b):\n    return a * b\n"] * 30
    plain = train_bpe(iter(text), vocab_size=300)
    assert len(plain.encode(" 9")) == 2
    words = [" 9", " z", " Running"]
    tok = train_bpe(iter(text), vocab_size=300, single_tokens=words)
    assert [len(tok.encode(w)) for w in words] == [1, 1, 1]
    # this text fills 291 of 300 ids (min_frequency 2): the words take free ids, nothing learned is dropped
    merges = [json.loads(t.to_json())["model"]["merges"] for t in (plain, tok)]
    assert plain.vocab_size == 291 < tok.vocab_size <= 300 and merges[1][: len(merges[0])] == merges[0]
    full = train_bpe(iter(text), vocab_size=plain.vocab_size, single_tokens=words)  # no room: the last merges go
    assert full.vocab_size == plain.vocab_size and [len(full.encode(w)) for w in words] == [1, 1, 1]
    for t in (tok, full):
        assert sorted(t.tok.get_vocab().values()) == list(range(t.vocab_size))  # the ids stay contiguous
    for s in ["x = 9 + 99", "Running z 9", "def f(a, b):\n    return a * b\n"]:
        assert tok.decode(tok.encode(s)) == full.decode(full.encode(s)) == s
    assert tok.encode(text[1]) == plain.encode(text[1])  # text without those words: as before


def test_single_tokens_must_be_one_pre_tokenized_word():
    with pytest.raises(TokenizerError, match="not one word"):
        train_bpe(iter(TEXT), vocab_size=320, single_tokens=["two words"])
