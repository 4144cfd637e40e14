"""The storage layer every node input and output goes through: directory artifacts published with a
commit marker and read back through a node-local cache, on local disk and on a real S3 endpoint
(moto server on 127.0.0.1); dataset digests independent of where the dataset was written; the cluster
connection rules."""

import json

import boto3
import pytest
from services import s3_server

from llada_core import storage

pytestmark = pytest.mark.slow  # an S3 server, a local Ray (the dataset digest test)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server("bkt") as env, pytest.MonkeyPatch.context() as mp:
        for k, v in (env | {"LLADA_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}).items():
            mp.setenv(k, v)
        yield boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])


def build(directory, payload: bytes = b"weights") -> None:
    (directory / "sub").mkdir()
    (directory / "sub" / "w.bin").write_bytes(payload)
    (directory / "meta.json").write_text("{}")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_output_dir_publishes_and_local_copy_reads_back(where, tmp_path, request):
    root = "s3://bkt/art" if where == "s3" else str(tmp_path / "art")
    if where == "s3":
        request.getfixturevalue("s3")
    uri = storage.join(root, "ckpt")
    with pytest.raises(RuntimeError):
        with storage.output_dir(uri) as d:
            build(d)
            raise RuntimeError("crash while building")
    assert not storage.artifact_exists(uri)  # nothing published
    with storage.output_dir(uri) as d:
        build(d)
    assert storage.artifact_exists(uri) and storage.size_of(uri) >= len(b"weights")
    local = storage.local_copy(uri, committed=True)
    assert (local / "sub" / "w.bin").read_bytes() == b"weights" and (local / "meta.json").read_text() == "{}"
    assert storage.list_dirs(root) == [uri]
    with pytest.raises(FileExistsError):
        with storage.output_dir(uri, replace=False) as d:
            build(d)
    with storage.output_dir(uri) as d:  # replaced: readers see the new content (a new cache key on S3)
        build(d, b"new weights")
    assert (storage.local_copy(uri, committed=True) / "sub" / "w.bin").read_bytes() == b"new weights"
    storage.delete(uri)
    assert not storage.artifact_exists(uri) and storage.list_dirs(root) == []


def test_s3_reader_refuses_uncommitted_and_corrupted_uploads(s3, tmp_path):
    with storage.output_dir("s3://bkt/c/ok") as d:
        build(d)
    s3.put_object(Bucket="bkt", Key="c/half/meta.json", Body=b"{}")  # an upload that died before its marker
    with pytest.raises(FileNotFoundError, match="not a finished artifact"):
        storage.local_copy("s3://bkt/c/half", committed=True)
    assert (storage.local_copy("s3://bkt/c/half") / "meta.json").exists()  # a user's plain prefix is fine
    s3.put_object(Bucket="bkt", Key="c/ok/sub/w.bin", Body=b"tampered")
    marker = json.loads(s3.get_object(Bucket="bkt", Key=f"c/ok/{storage.COMMIT}")["Body"].read())
    s3.put_object(Bucket="bkt", Key=f"c/ok/{storage.COMMIT}", Body=json.dumps(marker | {"v": 2}).encode())  # new key
    with pytest.raises(OSError, match="sha256 does not match its commit marker"):
        storage.local_copy("s3://bkt/c/ok", committed=True)
    s3.put_object(Bucket="bkt", Key="c/file.jsonl", Body=b'{"a": 1}\n')
    assert storage.local_copy("s3://bkt/c/file.jsonl").read_bytes() == b'{"a": 1}\n'


def test_checkpoint_and_tokenizer_round_trip_through_s3(s3, tmp_path):
    import torch

    from llada_core.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint
    from llada_core.data.tokenizer import load_tokenizer, train_bpe
    from llada_core.model.config import load_preset
    from llada_core.model.hf_io import expected_shapes

    tok = train_bpe(iter(["tokens for a tiny tokenizer"] * 10), 300)
    cfg = load_preset("tiny", [f"vocab_size={tok.vocab_size}"])
    state = {k: torch.randn(shape) for k, shape in expected_shapes(cfg).items()}
    save_checkpoint("s3://bkt/ck", cfg, state.items(), tok, {"source": "test"})
    assert read_checkpoint_header("s3://bkt/ck")[0] == cfg
    got_cfg, got, got_tok, _ = load_checkpoint("s3://bkt/ck")
    assert got_cfg == cfg and got_tok.digest == tok.digest and all(torch.equal(got[k], v) for k, v in state.items())
    assert load_tokenizer("s3://bkt/ck/tokenizer").digest == tok.digest


def test_dataset_digest_does_not_depend_on_where_it_was_written(tmp_path, tokenizer_dir, corpus, ray_local):
    from pipelines.run_store import artifact_digest
    from stages.prepare_data import PrepareDataConfig, run

    root, _ = corpus
    digests = []
    for name, workers in (("a", 1), ("elsewhere/b", 2)):
        out = tmp_path / name
        run(PrepareDataConfig(input=root, out=str(out), seq_len=32, tokenizer={"path": tokenizer_dir},
                              num_workers=workers))
        digests.append(artifact_digest(str(out)))
    assert digests[0] == digests[1]


def test_a_run_that_needs_a_cluster_never_starts_a_local_ray(monkeypatch):
    import ray

    from llada_core.cluster import ClusterError, ensure_ray

    ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", lambda address=None, **kw: (_ for _ in ()).throw(
        ConnectionError("Could not find any running Ray instance")) if address else pytest.fail("local Ray started"))
    with pytest.raises(ClusterError, match="no Ray cluster found"):
        ensure_ray(require_cluster=True)


def test_a_multi_node_run_refuses_a_sqlite_tracking_uri(monkeypatch):
    from llada_core.cluster import ClusterError
    from pipelines import executor

    monkeypatch.setattr(executor, "alive_nodes", lambda: 2)
    with pytest.raises(ClusterError, match="is a local file, but the Ray cluster has 2 nodes"):
        executor._check_tracking_reachable("sqlite:////work/mlflow.db")
    executor._check_tracking_reachable("http://mlflow:5000")  # a server is fine
    monkeypatch.setattr(executor, "alive_nodes", lambda: 1)
    executor._check_tracking_reachable("sqlite:////work/mlflow.db")  # one node: the embedded default
