"""S3 round trip against a real S3 HTTP endpoint (moto server) on 127.0.0.1, not an in-process mock."""

import os
import socket

import boto3
import pytest
from conftest import start_ray

from llada_core.config import load_config
from llada_core.data.shards import read_manifest, read_split
from llada_core.data.sources import DataError, list_sources
from llada_core.data.tokenizer import load_tokenizer
from stages.prepare_data import PrepareDataConfig, run

pytestmark = pytest.mark.slow  # local Ray cluster (multi-process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    import ray
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ray.shutdown()  # Ray workers must be started with the endpoint in their environment
        start_ray()
        yield env["AWS_ENDPOINT_URL"]
        ray.shutdown()
    server.stop()


def upload_corpus(endpoint, files, bucket):
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for path in files:
        s3.upload_file(path, bucket, f"corpus/{os.path.basename(path)}")
    return s3


def test_s3_to_s3_round_trip_matches_local(s3_endpoint, corpus, tokenizer_dir, tmp_path):
    src, files = corpus
    upload_corpus(s3_endpoint, files, "llada-data")
    values = {"seq_len": 32, "tokenizer": {"path": tokenizer_dir}, "val_fraction": 0.3, "rows_per_shard": 7}
    remote = run(load_config(PrepareDataConfig, values=values | {"input": "s3://llada-data/corpus/", "out": "s3://llada-data/packed"}))
    local = run(load_config(PrepareDataConfig, values=values | {"input": src, "out": str(tmp_path / "local")}))

    assert [s["uri"] for s in remote["sources"]] == [f"s3://llada-data/corpus/{os.path.basename(p)}" for p in files]
    assert [s["sha256"] for s in remote["sources"]] == [s["sha256"] for s in local["sources"]]
    assert remote["shards"] == local["shards"]  # byte-identical shards wherever they are written
    assert read_manifest("s3://llada-data/packed")["splits"] == local["splits"]
    for split in ("train", "val"):
        assert read_split("s3://llada-data/packed", split).equals(read_split(str(tmp_path / "local"), split))
    with pytest.raises(DataError, match="already holds a dataset"):
        run(load_config(PrepareDataConfig, values=values | {"input": "s3://llada-data/corpus/", "out": "s3://llada-data/packed"}))
    assert load_tokenizer(tokenizer_dir).digest == remote["tokenizer"]["digest"]


def test_s3_glob_and_missing_bucket(s3_endpoint, corpus):
    _, files = corpus
    upload_corpus(s3_endpoint, files, "llada-glob")
    found = list_sources("s3://llada-glob/corpus/*.jsonl")
    assert [f.uri for f in found] == ["s3://llada-glob/corpus/records.jsonl"] and found[0].fmt == "jsonl"
    with pytest.raises(DataError, match="s3://no-such-bucket/x"):
        list_sources("s3://no-such-bucket/x")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("LLADA_S3_MAX_ATTEMPTS", "1")
    with pytest.raises(DataError, match=r"cannot read s3://bucket/corpus"):
        list_sources("s3://bucket/corpus/")

