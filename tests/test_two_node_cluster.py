"""The recipe on a real 2-node Ray cluster whose nodes share NO filesystem (issue: every artifact
through object storage). Two `ray start` nodes on 127.0.0.1, each in its own mount namespace, so the
same absolute path is a different local disk on each node; S3 from a moto server; MLflow as a real
`mlflow server` process. The driver runs on the head (0 CPUs), so every node task that needs a CPU
and every Ray Train rank runs on the other node. Needs root (mount namespaces): CI runs as root; a
namespace that cannot be made fails the test, never skips it.

One DAG touches every stage kind: make_tasks, prepare pretrain/SFT/DPO, import-hf of a tiny HF
checkpoint uploaded to S3, a CPT node, merge, SFT, CAP, DPO, eval, export-hf. Then every node-local
directory is wiped and a re-run is a full cache hit; then one output object is deleted from S3 and
only that node and its dependents recompute."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
from services import free_port, mlflow_server, s3_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_ray")]

BIN = Path(sys.executable).parent
NODE_DIRS = ("home", "tmp", "cache", "work")


def in_namespace(root: Path, node: str, command: list[str]) -> list[str]:
    """`command` in a new mount namespace where root/mnt is node's own disk (root/disk-NODE)."""
    quoted = " ".join(f"'{c}'" for c in command)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind {root / f'disk-{node}'} {root / 'mnt'} && cd {root / 'mnt'} && exec {quoted}"]


def node_env(root: Path, aws: dict) -> dict:
    mnt = root / "mnt"
    return os.environ | aws | {"HOME": str(mnt / "home"), "TMPDIR": str(mnt / "tmp"),
                               "LLADA_CACHE_DIR": str(mnt / "cache"), "RAY_AUTH_MODE": "disabled",
                               "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="llada-2n-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    (root / "mnt").mkdir()
    for node in "ab":
        for d in NODE_DIRS:
            (root / f"disk-{node}" / d).mkdir(parents=True)
    with s3_server() as aws, mlflow_server(root / "mlflow.db", "s3://llada/mlartifacts", aws) as tracking:
        env, port = node_env(root, aws), free_port()
        ray = str(BIN / "ray")
        head = [ray, "start", "--head", "--port", str(port), "--num-cpus", "0", "--resources", '{"node_a": 1}',
                "--temp-dir", str(root / "ray-a"), "--include-dashboard", "false", "--disable-usage-stats"]
        worker = [ray, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--resources", '{"node_b": 1}',
                  "--temp-dir", str(root / "ray-b"), "--disable-usage-stats"]
        try:
            for node, cmd in (("a", head), ("b", worker)):
                done = subprocess.run(in_namespace(root, node, cmd), env=env, capture_output=True, text=True,
                                      timeout=180)
                assert done.returncode == 0, f"node {node} did not start:\n{done.stdout}\n{done.stderr}"
            yield {"root": root, "env": env | {"RAY_ADDRESS": f"127.0.0.1:{port}"}, "aws": aws, "tracking": tracking}
        finally:
            subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
            shutil.rmtree(root, ignore_errors=True)


def upload_inputs(aws: dict, tmp: Path) -> None:
    """A tiny Qwen3 checkpoint (random weights, word-level tokenizer) and a small corpus, on S3 only."""
    import torch
    from test_hf_interop import hf_tokenizer_dir
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, intermediate_size=48,
                                 max_position_embeddings=128)).save_pretrained(tmp / "hf")
    hf_tokenizer_dir(tmp / "hf", 96)
    s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"])
    for f in (tmp / "hf").iterdir():
        s3.upload_file(str(f), "llada", f"inputs/qwen3-tiny/{f.name}")
    for i in range(30):
        words = " ".join(f"w{(i * 7 + j * 13) % 94 + 1}" for j in range(40))
        s3.put_object(Bucket="llada", Key=f"inputs/corpus/doc{i:02d}.txt", Body=words.encode())


def run(cluster, run_id: str):
    """`llada run` as a driver on the head node; returns the run's node records."""
    from pipelines.run_store import RunStore

    overrides = [
        "store=s3://llada/store", "artifact_root=s3://llada/artifacts", f"tracking_uri={cluster['tracking']}",
        f"workdir={cluster['root'] / 'mnt' / 'work'}", "ray=cluster", "num_workers=1", "seq_len=64",
        "base.hf_checkpoint=s3://llada/inputs/qwen3-tiny", "data.input=s3://llada/inputs/corpus",
        "data.tokenizer.add_mask_token=<|mask|>", "data.val_fraction=0.2",
        "schedule.warmup_block_sizes=[1]", "schedule.warmup_tokens_per_block=0", "schedule.stable_tokens=0",
        "schedule.decay_tokens_per_block=256",
        "schedule.lr_warmup_tokens=0", "cpt.micro_batch=2", "cpt.candidates_every=1", "merge.k=2",
        "instruct.tasks.n=200", "instruct.max_len=64", "training.cpus_per_worker=1",
        "sft.steps=2", "sft.micro_batch=2", "cap.steps=1", "cap.micro_batch=2", "dpo.steps=1", "dpo.micro_batch=2",
        "eval.n_tasks=2", "eval.max_rows=4", "eval.sweep=[]",
        "export.format=sdar",  # the base is Qwen3: SDARForCausalLM, [MASK] moved to 151669, written to S3
    ]
    cmd = [str(BIN / "llada"), "run", "tiny-cpu", *overrides, "--run-id", run_id]
    done = subprocess.run(in_namespace(cluster["root"], "a", cmd), env=cluster["env"], capture_output=True,
                          text=True, timeout=1800)
    store = RunStore("s3://llada/store")
    records = {n: store.node(run_id, n) for n in ("make_tasks", "prepare_pretrain", "prepare_sft", "prepare_dpo",
                                                   "base", "cpt_decay", "merge", "sft", "cap", "dpo", "eval", "export")}
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:],
                                  {k: r.get("error") for k, r in records.items()})
    return records


# three runs of the recipe on 2 cores: 538 s here at 312dbae, but 1100 s (+ 78 s of cluster set-up)
# in CI's fresh clone of the same commit, which the earlier 1200 s did not cover; the first run alone
# once took over 900 s (the run's own limit, now 1800 s) while another recipe shared the 2 cores
@pytest.mark.timeout(3000)
def test_recipe_on_two_nodes_with_separate_disks_and_s3_only(cluster, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    for k, v in cluster["aws"].items():
        monkeypatch.setenv(k, v)
    root = cluster["root"]
    upload_inputs(cluster["aws"], tmp_path)

    first = run(cluster, "two-node-1")
    assert {r["state"] for r in first.values()} == {"SUCCEEDED"}
    for name, rec in first.items():  # every output is on S3, none on a node's disk
        assert all(o["uri"].startswith("s3://llada/artifacts/two-node-1/") for o in rec["outputs"].values()), name
    disks = {n: root / f"disk-{n}" for n in "ab"}
    assert not any("s3:" in p.parts for d in disks.values() for p in d.rglob("*"))  # no local `s3:/...` dirs
    assert not list((disks["b"] / "tmp").glob("llada-ckpt-*"))  # Ray Train's per-rank temp dirs were removed
    fetched = {n: disk_bytes(d / "cache") for n, d in disks.items()}
    assert fetched["b"] > 0  # node b's tasks and ranks read their inputs from S3 into b's own cache

    client = MlflowClient(cluster["tracking"])
    exp = client.get_experiment_by_name("llada-tiny-cpu")
    children = client.search_runs([exp.experiment_id],
                                  "tags.`llada.run_id` = 'two-node-1' and tags.`llada.kind` = 'node'")
    assert sorted(r.data.tags["llada.node"] for r in children) == sorted(first)
    sft = next(r for r in children if r.data.tags["llada.node"] == "sft")
    assert [m.step for m in client.get_metric_history(sft.info.run_id, "loss")] == [1, 2]
    ev = next(r for r in children if r.data.tags["llada.node"] == "eval")
    assert [a.path for a in client.list_artifacts(ev.info.run_id, "outputs")] == ["outputs/results"]
    # the experiment opens in MLflow's training view; the parent run carries the summary and the lineage
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = client.search_runs([exp.experiment_id], "tags.`llada.run_id` = 'two-node-1' and "
                                                        "tags.`llada.kind` = 'pipeline'")
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    results = json.loads(boto3.client("s3", endpoint_url=cluster["aws"]["AWS_ENDPOINT_URL"]).get_object(
        Bucket="llada", Key="artifacts/two-node-1/eval/eval.json")["Body"].read())
    assert parent.data.metrics["sft.task_accuracy"] == results["sft"]["tasks"]["accuracy"]
    assert parent.data.metrics["cap.tpf"] == results["cap"]["tasks"]["tpf"]
    assert parent.data.metrics["dpo.preference_accuracy"] == results["dpo"]["preference_accuracy"]
    assert {f"{m}.elbo_ppl" for m in results} <= set(parent.data.metrics)
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "lineage")] == [
        "lineage/lineage.mmd", "lineage/lineage.txt"]

    s3 = boto3.client("s3", endpoint_url=cluster["aws"]["AWS_ENDPOINT_URL"])
    served = json.loads(s3.get_object(Bucket="llada", Key="artifacts/two-node-1/export/hf/config.json")["Body"].read())
    assert (served["architectures"], served["mask_token_id"]) == (["SDARForCausalLM"], 151669)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="llada")
    objects = [o for page in pages for o in page.get("Contents", [])]
    by_prefix: dict[str, int] = {}
    for o in objects:
        top = "/".join(o["Key"].split("/")[:2])
        by_prefix[top] = by_prefix.get(top, 0) + o["Size"]
    print(f"\nS3 bytes by prefix after run 1: {json.dumps(by_prefix)}; downloaded into node-local caches: {fetched}; "
          f"seconds per node: {json.dumps({k: r.get('seconds') for k, r in first.items()})}")

    for d in disks.values():  # every node-local directory wiped: a re-run needs nothing but S3
        for sub in NODE_DIRS:
            shutil.rmtree(d / sub)
            (d / sub).mkdir()
    second = run(cluster, "two-node-2")
    assert {r["state"] for r in second.values()} == {"SKIPPED-CACHED"}  # nothing recomputed, nothing trained

    s3.delete_object(Bucket="llada", Key="artifacts/two-node-1/dpo/checkpoint/meta.json")  # one output object gone
    third = run(cluster, "two-node-3")
    recomputed = {n for n, r in third.items() if r["state"] == "SUCCEEDED"}
    assert recomputed == {"dpo", "eval", "export"}, {n: r["state"] for n, r in third.items()}
    assert {r["state"] for n, r in third.items() if n not in recomputed} == {"SKIPPED-CACHED"}
