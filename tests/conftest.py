import json
import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOCS = [
    "def add(a, b):\n    return a + b\n",
    "Block diffusion decodes a block of tokens in parallel.\n" * 7,
    "short",
    "x = [i * i for i in range(10)]\nprint(x)\n",
    "Ünïcödé text stays intact: naïve café, 東京, emoji 🙂.\n",
    "The quick brown fox jumps over the lazy dog. " * 30,
]
JSONL_DOCS = [f"record {i}: " + "lorem ipsum dolor sit amet " * (i % 5 + 1) for i in range(40)]
PARQUET_DOCS = [f"parquet row {i} " + "alpha beta gamma " * (i % 7 + 1) for i in range(30)]


def write_corpus(root) -> dict:
    """A corpus in every supported format; returns {path: [documents in file order]}."""
    os.makedirs(root, exist_ok=True)
    files = {}
    for i, doc in enumerate(DOCS):
        ext = (".txt", ".md", ".py")[i % 3]
        path = os.path.join(root, f"doc{i}{ext}")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(doc)
        files[path] = [doc]
    path = os.path.join(root, "records.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for doc in JSONL_DOCS:
            fh.write(json.dumps({"text": doc, "meta": 1}) + "\n")
    files[path] = JSONL_DOCS
    path = os.path.join(root, "table.parquet")
    pq.write_table(pa.table({"text": PARQUET_DOCS, "id": list(range(len(PARQUET_DOCS)))}), path)
    files[path] = PARQUET_DOCS
    return dict(sorted(files.items()))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return str(root), write_corpus(str(root))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus):
    from llada_core.data.tokenizer import train_bpe

    _, files = corpus
    texts = [d for docs in files.values() for d in docs]
    tok = train_bpe(iter(texts), vocab_size=400)
    out = tmp_path_factory.mktemp("tok")
    tok.save(out)
    return str(out)


_RAY_TEMP = tempfile.mkdtemp(prefix="llada-ray-", dir="/tmp")


def start_ray():
    """Local Ray with a short temp dir (unix socket paths are length-limited). Workers inherit the
    environment of this call, so a test that changes env for workers restarts Ray (see test_s3)."""
    import ray

    from llada_core.cluster import local_ray_train_settings

    if not ray.is_initialized():
        local_ray_train_settings()
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=_RAY_TEMP, logging_level="ERROR", log_to_driver=False)
    return ray


@pytest.fixture
def ray_local():
    return start_ray()


@pytest.fixture(scope="module")
def no_ray():
    """For modules whose tests start their own processes: an idle Ray left in this process by earlier
    tests would share the 2 cores with them (measured: a SIGKILL-resume test 84 s -> 74 s)."""
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session", autouse=True)
def _ray_teardown():
    yield
    import ray

    ray.shutdown()
    shutil.rmtree(_RAY_TEMP, ignore_errors=True)
