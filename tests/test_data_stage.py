"""The pretraining data stage end to end on a local Ray, checked against direct tokenization."""

import hashlib
import os

import numpy as np
import pytest

from llada_core.config import ConfigError, load_config
from llada_core.data.packing import PAD_DOC
from llada_core.data.shards import read_manifest, read_split
from llada_core.data.sources import DataError
from llada_core.data.tokenizer import load_tokenizer
from stages.prepare_data import PrepareDataConfig, run

SEQ = 32

pytestmark = pytest.mark.slow  # local Ray cluster (multi-process)


def prepare(src, out, tokenizer_dir, **kw):
    values = {"input": src, "out": str(out), "seq_len": SEQ, "tokenizer": {"path": tokenizer_dir}, "val_fraction": 0.3,
              "rows_per_shard": 7} | kw
    return run(load_config(PrepareDataConfig, values=values))


def rows_of(out, split):
    table = read_split(str(out), split)
    return np.array(table["input_ids"].to_pylist()), np.array(table["doc_ids"].to_pylist())


def unpack(ids, doc_ids, eos):
    """Rebuild the document stream: non-pad tokens in row order, split at EOS."""
    flat = ids[doc_ids != PAD_DOC]
    docs, cur = [], []
    for t in flat.tolist():
        if t == eos:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    assert cur == [], "stream must end with EOS"
    return docs


def is_val(text, seed, fraction):
    h = int.from_bytes(hashlib.sha256(f"{seed}\0".encode() + text.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


@pytest.mark.parametrize("range_bytes", [64 << 20, 1])  # one range; a range per file (each padded at its end)
def test_packs_every_document_exactly(ray_local, corpus, tokenizer_dir, tmp_path, range_bytes):
    src, files = corpus
    manifest = prepare(src, tmp_path / "ds", tokenizer_dir, range_bytes=range_bytes, num_workers=2)
    assert manifest["ranges"] == (1 if range_bytes > 1 else len(files))
    tok = load_tokenizer(tokenizer_dir)
    docs = [d for ds in files.values() for d in ds]  # sorted file order, records in file order
    expected = {"train": [], "val": []}
    for d in docs:
        expected["val" if is_val(d, 0, 0.3) else "train"].append(tok.encode(d))
    assert expected["train"] and expected["val"]
    for split in ("train", "val"):
        ids, doc_ids = rows_of(tmp_path / "ds", split)
        assert ids.shape[1] == SEQ and doc_ids.shape == ids.shape  # rows exactly L
        assert unpack(ids, doc_ids, tok.id_of("eos")) == expected[split]  # order kept, nothing lost
        non_pad = int((doc_ids != PAD_DOC).sum())
        assert non_pad == sum(len(e) + 1 for e in expected[split]) == manifest["splits"][split]["tokens"]
        assert manifest["splits"][split]["rows"] == len(ids)
        assert manifest["splits"][split]["documents"] == len(expected[split])
        for row_ids, row_docs in zip(ids, doc_ids, strict=True):  # doc ids step exactly after EOS
            real = row_docs[row_docs != PAD_DOC]
            steps = np.diff(real)
            assert set(steps.tolist()) <= {0, 1}
            assert ((steps == 1) == (row_ids[: len(real) - 1] == tok.id_of("eos"))).all()
    assert manifest["tokenizer"]["digest"] == tok.digest
    assert [s["uri"] for s in manifest["sources"]] == list(files)
    for s in manifest["sources"]:
        assert s["sha256"] == hashlib.sha256(open(s["uri"], "rb").read()).hexdigest()
    assert manifest["code_version"]["package"] == "0.1.0"
    assert load_tokenizer(tmp_path / "ds" / "tokenizer").digest == tok.digest


def test_output_is_the_same_for_any_worker_count_and_byte_identical(ray_local, corpus, tmp_path):
    src, files = corpus
    kw = {"tokenizer": {"train": True, "vocab_size": 300}, "range_bytes": 1}  # a range per file
    m1 = prepare(src, tmp_path / "a", None, **kw, num_workers=1)
    m3 = prepare(src, tmp_path / "b", None, **kw, num_workers=3)
    assert m1["ranges"] == len(files) > 3
    assert m1 == m3  # shards, digests, statistics: the whole manifest
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for shards in m1["shards"].values():
        assert len(shards) >= 1
        for shard in shards:
            a = (tmp_path / "a" / shard["path"]).read_bytes()
            assert a == (tmp_path / "b" / shard["path"]).read_bytes()
            assert hashlib.sha256(a).hexdigest() == shard["sha256"]


def test_split_is_by_document_and_seeded(ray_local, corpus, tokenizer_dir, tmp_path):
    src, files = corpus
    docs = [d for ds in files.values() for d in ds]
    counts = {}
    for seed in (0, 5):
        manifest = prepare(src, tmp_path / f"s{seed}", tokenizer_dir, seed=seed)
        counts[seed] = manifest["splits"]["val"]["documents"]
        assert counts[seed] == sum(is_val(d, seed, 0.3) for d in docs)
    assert [is_val(d, 0, 0.3) for d in docs] != [is_val(d, 5, 0.3) for d in docs]


def test_refuses_existing_dataset_then_overwrites(ray_local, corpus, tokenizer_dir, tmp_path):
    src, _ = corpus
    prepare(src, tmp_path / "ds", tokenizer_dir)
    with pytest.raises(DataError, match="already holds a dataset; pass --overwrite"):
        prepare(src, tmp_path / "ds", tokenizer_dir)
    before = read_manifest(str(tmp_path / "ds"))
    after = prepare(src, tmp_path / "ds", tokenizer_dir, overwrite=True, seq_len=16)
    assert before["seq_len"] == SEQ and after["seq_len"] == 16 == read_manifest(str(tmp_path / "ds"))["seq_len"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temp or old directories left behind


KILLED_PREPARE = """
import json, sys, time
import llada_core.data.ranges as ranges
from llada_core.config import load_config
from stages.prepare_data import PrepareDataConfig, run

class Slow(ranges.RangeWorker):  # defined here, so Ray ships it to the actors by value
    def __call__(self, batch):
        time.sleep(0.4)
        return super().__call__(batch)

ranges.RangeWorker = Slow
run(load_config(PrepareDataConfig, values=json.loads(sys.argv[1])))
"""


def test_a_killed_prepare_keeps_its_finished_ranges_and_the_rerun_equals_an_uninterrupted_one(
        ray_local, corpus, tokenizer_dir, tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    src, files = corpus
    values = {"input": src, "seq_len": SEQ, "tokenizer": {"path": tokenizer_dir}, "val_fraction": 0.3,
              "rows_per_shard": 7, "range_bytes": 1, "num_workers": 1}
    reference = prepare(src, tmp_path / "ref", tokenizer_dir, range_bytes=1, num_workers=1)
    partial = tmp_path / ".ds.partial"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PREPARE, json.dumps(values | {"out": str(tmp_path / "ds")})],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while len(list(partial.glob("ranges/*.json"))) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-way
    finally:
        proc.wait()
    done = [json.loads(p.read_text()) for p in sorted(partial.glob("ranges/*.json"))]
    assert 2 <= len(done) < len(files) and not (tmp_path / "ds").exists()
    kept = {s["path"]: os.stat(partial / s["path"]) for r in done for shards in r["shards"].values() for s in shards}
    assert kept
    manifest = prepare(src, tmp_path / "ds", tokenizer_dir, range_bytes=1, num_workers=1)
    assert manifest == reference
    for path, before in kept.items():  # finished shards were verified and kept, not rewritten
        after = os.stat(tmp_path / "ds" / path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    for shard in (s for shards in reference["shards"].values() for s in shards):
        assert (tmp_path / "ds" / shard["path"]).read_bytes() == (tmp_path / "ref" / shard["path"]).read_bytes()
    assert not partial.exists()


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda d: None, "no input files match"),
        (lambda d: open(os.path.join(d, "empty.txt"), "w").close(), "is empty"),
        (lambda d: open(os.path.join(d, "a.jsonl"), "w").write('{"content": "x"}\n'),
         r"missing column\(s\): needs text"),
        (lambda d: open(os.path.join(d, "a.jsonl"), "w").write("not json\n"), "first record is not a JSON object"),
    ],
)
def test_bad_inputs_fail_before_writing(ray_local, tokenizer_dir, tmp_path, make, error):
    src = tmp_path / "in"
    src.mkdir()
    make(str(src))
    with pytest.raises(DataError, match=error):
        prepare(str(src), tmp_path / "out", tokenizer_dir)
    assert not (tmp_path / "out").exists()


def test_non_utf8_skip_or_fail(ray_local, tokenizer_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text("fine text " * 10)
    (src / "bad.txt").write_bytes(b"caf\xe9 latin-1 \xff\xfe")
    with pytest.raises(DataError, match=r"bad.txt: not valid UTF-8 \(on_bad_utf8=fail\)"):
        prepare(str(src), tmp_path / "out", tokenizer_dir, on_bad_utf8="fail")
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["in"]
    manifest = prepare(str(src), tmp_path / "out", tokenizer_dir, on_bad_utf8="skip", val_fraction=0.0)
    assert manifest["skipped"]["bad_utf8"] == 1 and manifest["splits"]["train"]["documents"] == 1


def test_only_bad_documents_is_an_error(ray_local, tokenizer_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bad.txt").write_bytes(b"\xff\xfe\xfd")
    with pytest.raises(DataError, match="no non-empty UTF-8 document"):
        prepare(str(src), tmp_path / "out", tokenizer_dir)
    assert not (tmp_path / "out").exists()


def test_corrupted_shard_is_detected(ray_local, corpus, tokenizer_dir, tmp_path):
    src, _ = corpus
    manifest = prepare(src, tmp_path / "ds", tokenizer_dir)
    shard = tmp_path / "ds" / manifest["shards"]["train"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 does not match the manifest"):
        read_split(str(tmp_path / "ds"), "train")


def test_seq_len_one_is_a_config_error(tokenizer_dir, corpus, tmp_path):
    with pytest.raises(ConfigError, match="seq_len"):
        prepare(corpus[0], tmp_path / "out", tokenizer_dir, seq_len=1)
