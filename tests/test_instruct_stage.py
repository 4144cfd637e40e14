"""SFT / DPO preparation: chat template, prompt lengths, too-long policy, bad records."""

import json

import pytest

from llada_core.config import load_config
from llada_core.data.shards import read_split
from llada_core.data.sources import DataError
from llada_core.data.synthetic import write_task_files
from llada_core.data.tokenizer import load_tokenizer, train_bpe
from stages.prepare_instruct import PrepareInstructConfig, run

pytestmark = pytest.mark.slow  # local Ray cluster (multi-process)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    return write_task_files(tmp_path_factory.mktemp("tasks"), 120, seed=1)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, task_files):
    texts = [line for f in task_files.values() for line in open(f)]
    out = tmp_path_factory.mktemp("tok")
    train_bpe(iter(texts), 400).save(out)
    return str(out)


def prepare(kind, src, out, tok_dir, **kw):
    return run(load_config(PrepareInstructConfig,
                           values={"kind": kind, "input": src, "out": str(out), "tokenizer": tok_dir} | kw))


def test_sft_examples_decode_to_prompt_and_response(ray_local, task_files, tok_dir, tmp_path):
    manifest = prepare("sft", task_files["sft_train"], tmp_path / "sft", tok_dir, val_fraction=0.2)
    tok = load_tokenizer(tok_dir)
    records = {json.loads(line)["prompt"]: json.loads(line)["response"] for line in open(task_files["sft_train"])}
    seen = 0
    for split in ("train", "val"):
        table = read_split(str(tmp_path / "sft"), split).to_pylist()
        assert len(table) == manifest["splits"][split]["examples"] > 0
        for row in table:
            ids, n = row["input_ids"], row["prompt_len"]
            assert ids[0] == tok.id_of("bos") and ids[n - 1] == tok.id_of("assistant") and ids[1] == tok.id_of("user")
            prompt = tok.decode(ids[2 : n - 2])
            assert ids[n - 2] == tok.id_of("eot")
            assert tok.decode(ids[n:-2]) == records[prompt]
            assert ids[-2:] == [tok.id_of("eot"), tok.id_of("eos")]
            seen += 1
    assert seen == len(records)


def test_dpo_pairs_share_the_prompt(ray_local, task_files, tok_dir, tmp_path):
    prepare("dpo", task_files["dpo_train"], tmp_path / "dpo", tok_dir)
    tok = load_tokenizer(tok_dir)
    rows = read_split(str(tmp_path / "dpo"), "train").to_pylist()
    source = [json.loads(line) for line in open(task_files["dpo_train"])]
    assert len(rows) == len(source)
    for row, rec in zip(rows, source, strict=True):  # input order is kept
        n = row["prompt_len"]
        assert row["chosen_ids"][:n] == row["rejected_ids"][:n]
        assert tok.decode(row["chosen_ids"][n:-2]) == rec["chosen"]
        assert tok.decode(row["rejected_ids"][n:-2]) == rec["rejected"]


def test_messages_format_and_too_long_policy(ray_local, tok_dir, tmp_path):
    src = tmp_path / "chat.jsonl"
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Add: 1+2="},
             {"role": "assistant", "content": "3"}]
    long = [{"role": "user", "content": "apple " * 200}, {"role": "assistant", "content": "x"}]
    src.write_text(json.dumps({"messages": convo}) + "\n" + json.dumps({"messages": long}) + "\n")
    manifest = prepare("sft", str(src), tmp_path / "out", tok_dir, max_len=64)
    assert manifest["skipped"]["too_long"] == 1 and manifest["splits"]["train"]["examples"] == 1
    assert manifest["longest_example"] <= 64
    with pytest.raises(DataError, match=r"tokens > max_len=64"):
        prepare("sft", str(src), tmp_path / "out2", tok_dir, max_len=64, on_too_long="error")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize(
    "kind, line, error",
    [
        ("dpo", {"prompt": "p", "chosen": "c"}, r"missing column\(s\): needs prompt/chosen/rejected"),
        ("sft", {"question": "q"}, "needs prompt/response or messages"),
        ("sft", {"messages": [{"role": "user", "content": "no answer"}]}, "last message must be the assistant"),
    ],
)
def test_bad_records(ray_local, tok_dir, tmp_path, kind, line, error):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=error):
        prepare(kind, str(src), tmp_path / "out", tok_dir)
    assert not (tmp_path / "out").exists()
